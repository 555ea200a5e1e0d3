// Command imagebuilder makes the release image in steps, each one Bazel
// action of the rules in release/oci.bzl:
//
//	imagebuilder base-layer   --debian-lock L --deb D... --out base.tar.gz --info base.json
//	imagebuilder binary-layer --binary /usr/bin/kms=FILE... --out app.tar.gz --info app.json
//	imagebuilder image        --layer base.tar.gz=base.json --layer ... --entrypoint /usr/bin/kms --layout DIR
//	imagebuilder archive      --layout DIR --out image.tar
//	imagebuilder sbom         --binary /usr/bin/kms=FILE=PACKAGES... --go-mod go.mod --debian-lock L --out sbom.spdx.json
//
// Every input is a file or a flag and no environment is read, so equal
// inputs give equal outputs.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cmdkms/kms/release/imagebuilder"
	"github.com/cmdkms/kms/release/sbom"
)

// Keys of Bazel's stable-status.txt (written by the workspace status
// command on --stamp builds) that override --version, --revision and
// --source-date-epoch.
const (
	keyVersion = "STABLE_KMS_VERSION"
	keyCommit  = "STABLE_KMS_COMMIT"
	keyEpoch   = "STABLE_KMS_SOURCE_DATE_EPOCH"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// stamp is the release identity: set by flags, or on --stamp builds by
// Bazel's status file.
type stamp struct {
	version, revision, statusFile string
	epoch                         int64
}

func (s *stamp) register(fs *flag.FlagSet) {
	fs.StringVar(&s.version, "version", "dev", "release version")
	fs.StringVar(&s.revision, "revision", "", "source revision (git commit)")
	fs.Int64Var(&s.epoch, "source-date-epoch", 0, "creation time and file mtime, seconds since 1970")
	fs.StringVar(&s.statusFile, "stamp-status-file", "", "Bazel stable-status.txt; its "+keyVersion+", "+keyCommit+" and "+keyEpoch+" override the flags")
}

func (s *stamp) resolve() error {
	if s.statusFile == "" {
		return nil
	}
	f, err := os.Open(s.statusFile)
	if err != nil {
		return err
	}
	defer f.Close()
	st := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		st[k] = v
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if v, ok := st[keyVersion]; ok {
		s.version = v
	}
	if v, ok := st[keyCommit]; ok {
		s.revision = v
	}
	v, ok := st[keyEpoch]
	if !ok {
		return fmt.Errorf("%s has no %s: is this a --stamp build with tools/bazel.d/workspace_status.sh?", s.statusFile, keyEpoch)
	}
	s.epoch, err = strconv.ParseInt(v, 10, 64)
	return err
}

func (s *stamp) time() time.Time { return time.Unix(s.epoch, 0).UTC() }

func main() {
	cmds := map[string]func([]string) error{
		"base-layer":   baseLayer,
		"binary-layer": binaryLayer,
		"image":        image,
		"archive":      archive,
		"sbom":         sbomCmd,
	}
	if len(os.Args) < 2 || cmds[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: imagebuilder base-layer|binary-layer|image|archive|sbom [flags]")
		os.Exit(2)
	}
	if err := cmds[os.Args[1]](os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "imagebuilder %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func parse(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	for _, r := range required {
		if fs.Lookup(r).Value.String() == "" {
			return fmt.Errorf("--%s is required", r)
		}
	}
	return nil
}

func writeLayer(out, infoOut string, gz []byte, info imagebuilder.LayerInfo) error {
	if err := os.WriteFile(out, gz, 0o644); err != nil {
		return err
	}
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(infoOut, append(b, '\n'), 0o644)
}

func readBinaries(specs []string) ([]imagebuilder.Binary, error) {
	var bins []imagebuilder.Binary
	for _, b := range specs {
		imgPath, file, ok := strings.Cut(b, "=")
		if !ok {
			return nil, fmt.Errorf("--binary %q: want IMAGE_PATH=FILE", b)
		}
		bin, err := imagebuilder.ReadBinary(imgPath, file)
		if err != nil {
			return nil, err
		}
		bins = append(bins, bin)
	}
	return bins, nil
}

func baseLayer(args []string) error {
	fs := flag.NewFlagSet("base-layer", flag.ExitOnError)
	var debs list
	var st stamp
	st.register(fs)
	lockFile := fs.String("debian-lock", "", "lock file pinning the Debian packages")
	fs.Var(&debs, "deb", "a Debian package named in the lock (repeat)")
	out := fs.String("out", "", "output: the gzip layer")
	info := fs.String("info", "", "output: the layer's info (JSON)")
	if err := parse(fs, args, "debian-lock", "out", "info"); err != nil {
		return err
	}
	if err := st.resolve(); err != nil {
		return err
	}
	lock, err := imagebuilder.ReadLock(*lockFile)
	if err != nil {
		return err
	}
	matched, err := lock.MatchDebs(debs)
	if err != nil {
		return err
	}
	gz, li, err := imagebuilder.BaseLayer(matched, st.time())
	if err != nil {
		return err
	}
	return writeLayer(*out, *info, gz, li)
}

func binaryLayer(args []string) error {
	fs := flag.NewFlagSet("binary-layer", flag.ExitOnError)
	var bins list
	var st stamp
	st.register(fs)
	fs.Var(&bins, "binary", "IMAGE_PATH=FILE: a static binary (repeat)")
	out := fs.String("out", "", "output: the gzip layer")
	info := fs.String("info", "", "output: the layer's info (JSON)")
	if err := parse(fs, args, "out", "info"); err != nil {
		return err
	}
	if err := st.resolve(); err != nil {
		return err
	}
	binaries, err := readBinaries(bins)
	if err != nil {
		return err
	}
	gz, li, err := imagebuilder.BinaryLayer(binaries, st.time())
	if err != nil {
		return err
	}
	return writeLayer(*out, *info, gz, li)
}

func image(args []string) error {
	fs := flag.NewFlagSet("image", flag.ExitOnError)
	var layers, entrypoint list
	var st stamp
	st.register(fs)
	fs.Var(&layers, "layer", "LAYER.tar.gz=LAYER.json, bottom layer first (repeat)")
	fs.Var(&entrypoint, "entrypoint", "entrypoint word (repeat; the first is the program)")
	title := fs.String("title", "kms", "image title")
	source := fs.String("source", "", "source repository URL")
	licenses := fs.String("licenses", "", "SPDX license expression of the project's code")
	layoutDir := fs.String("layout", "", "output: OCI image layout directory")
	digestFile := fs.String("digest", "", "output: the manifest digest, sha256:...")
	if err := parse(fs, args, "layout"); err != nil {
		return err
	}
	if err := st.resolve(); err != nil {
		return err
	}
	var ls []imagebuilder.Layer
	for _, l := range layers {
		gzFile, infoFile, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("--layer %q: want LAYER.tar.gz=LAYER.json", l)
		}
		gz, err := os.ReadFile(gzFile)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(infoFile)
		if err != nil {
			return err
		}
		var info imagebuilder.LayerInfo
		if err := json.Unmarshal(b, &info); err != nil {
			return fmt.Errorf("%s: %w", infoFile, err)
		}
		ls = append(ls, imagebuilder.Layer{Gzip: gz, Info: info})
	}
	anns := map[string]string{
		imagebuilder.AnnotationTitle:   *title,
		imagebuilder.AnnotationVersion: st.version,
	}
	for k, v := range map[string]string{
		imagebuilder.AnnotationRevision: st.revision,
		imagebuilder.AnnotationSource:   *source,
		imagebuilder.AnnotationLicenses: *licenses,
	} {
		if v != "" {
			anns[k] = v
		}
	}
	img, err := imagebuilder.Image(imagebuilder.ImageOptions{
		Layers: ls, Entrypoint: entrypoint, Created: st.time(), Annotations: anns,
	})
	if err != nil {
		return err
	}
	if err := imagebuilder.WriteLayout(*layoutDir, img, st.version); err != nil {
		return err
	}
	if *digestFile == "" {
		return nil
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	return os.WriteFile(*digestFile, []byte(d.String()+"\n"), 0o644)
}

func archive(args []string) error {
	fs := flag.NewFlagSet("archive", flag.ExitOnError)
	layoutDir := fs.String("layout", "", "OCI image layout directory")
	out := fs.String("out", "", "output: OCI archive (tar of the layout)")
	if err := parse(fs, args, "layout", "out"); err != nil {
		return err
	}
	// The archive's entries carry the image's own creation time.
	created, err := imagebuilder.LayoutCreated(*layoutDir)
	if err != nil {
		return err
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	if err := imagebuilder.WriteArchive(*layoutDir, f, created); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func sbomCmd(args []string) error {
	fs := flag.NewFlagSet("sbom", flag.ExitOnError)
	var bins list
	var st stamp
	st.register(fs)
	fs.Var(&bins, "binary", "IMAGE_PATH=FILE=PACKAGES: a Go binary in the image and a file listing the import paths linked into it, one a line (repeat)")
	goModFile := fs.String("go-mod", "", "the main module's go.mod (module versions)")
	lockFile := fs.String("debian-lock", "", "lock file of the Debian packages in the base")
	name := fs.String("name", "kms", "what the SBOM describes")
	licenses := fs.String("licenses", "", "SPDX license expression of the project's code")
	out := fs.String("out", "", "output: SPDX 2.3 JSON")
	if err := parse(fs, args, "go-mod", "debian-lock", "out"); err != nil {
		return err
	}
	if err := st.resolve(); err != nil {
		return err
	}
	goMod, err := os.ReadFile(*goModFile)
	if err != nil {
		return err
	}
	lock, err := imagebuilder.ReadLock(*lockFile)
	if err != nil {
		return err
	}
	doc := sbom.Image{Name: *name, Version: st.version, Licenses: *licenses, Created: st.time(), GoMod: goMod}
	for _, b := range bins {
		parts := strings.SplitN(b, "=", 3)
		if len(parts) != 3 {
			return fmt.Errorf("--binary %q: want IMAGE_PATH=FILE=PACKAGES", b)
		}
		data, err := os.ReadFile(parts[1])
		if err != nil {
			return err
		}
		pkgs, err := os.ReadFile(parts[2])
		if err != nil {
			return err
		}
		doc.Binaries = append(doc.Binaries, sbom.Binary{Path: parts[0], Data: data, Packages: strings.Fields(string(pkgs))})
	}
	for _, p := range lock.Packages {
		doc.Debs = append(doc.Debs, sbom.DebPackage{Name: p.Name, Version: p.Version, Architecture: p.Architecture, SHA256: p.SHA256})
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	if err := sbom.Write(f, doc); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
