// Command imagebuilder makes the release image in steps, each one Bazel
// action of the rules in release/oci.bzl:
//
//	imagebuilder base-layer   --debian-lock L --deb D... --out base.tar.gz --info base.json
//	imagebuilder binary-layer --binary /usr/bin/kms=FILE... --out app.tar.gz --info app.json
//	imagebuilder image        --layer base.tar.gz=base.json --layer ... --entrypoint /usr/bin/kms --layout DIR
//	imagebuilder index        --image DIR... --layout DIR --digest FILE
//	imagebuilder archive      --layout DIR --out image.tar
//	imagebuilder sbom         --binary ARCH:/usr/bin/kms=FILE=PACKAGES... --go-mod go.mod --debian-lock L --out sbom.spdx.json
//	imagebuilder deb-file     --deb D --path usr/bin/qemu-aarch64-static --out FILE
//
// Every input is a file or a flag and no environment is read, so equal
// inputs give equal outputs.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/release/imagebuilder"
	"github.com/cmdkms/kms/release/sbom"
	"github.com/cmdkms/kms/src/cli"
)

// develVersion is what unstamped builds are called, as `kms --version` says.
const develVersion = "devel"

// stamp is the release identity: set by flags, or on --stamp builds by
// Bazel's status file.
type stamp struct {
	version, revision, statusFile string
	epoch                         int64
}

func stampFlags(fs *pflag.FlagSet) *stamp {
	s := &stamp{}
	fs.StringVar(&s.version, "version", develVersion, "release version")
	fs.StringVar(&s.revision, "revision", "", "source revision (git commit)")
	fs.Int64Var(&s.epoch, "source-date-epoch", 0, "creation time and file mtime, seconds since 1970")
	fs.StringVar(&s.statusFile, "stamp-status-file", "", "Bazel stable-status.txt of a --stamp build; overrides the three flags above")
	return s
}

func (s *stamp) resolve() error {
	if s.statusFile == "" {
		return nil
	}
	st, err := imagebuilder.ReadStamp(s.statusFile)
	if err != nil {
		return err
	}
	s.version, s.revision, s.epoch = st.Version, st.Commit, st.Epoch
	return nil
}

func (s *stamp) time() time.Time { return time.Unix(s.epoch, 0).UTC() }

// step is one subcommand: define declares its flags and returns what runs
// once they are parsed; required names the flags it cannot do without.
func step(name, summary string, required []string, define func(fs *pflag.FlagSet) func() error) cli.Command {
	return cli.Command{
		Name:  "imagebuilder " + name,
		Usage: "imagebuilder " + name + ": " + summary + "\n\nFlags:\n",
		Flags: func(fs *pflag.FlagSet) func([]string) error {
			run := define(fs)
			return func(args []string) error {
				if err := cli.NoArgs(args); err != nil {
					return err
				}
				for _, r := range required {
					if !fs.Changed(r) {
						return cli.Usagef("--%s is required", r)
					}
				}
				return run()
			}
		},
	}
}

var steps = map[string]cli.Command{
	"base-layer":   step("base-layer", "the base layer from the Debian packages of a lock file", []string{"debian-lock", "out", "info"}, baseLayer),
	"binary-layer": step("binary-layer", "a layer of static binaries, 0755 root:root", []string{"out", "info"}, binaryLayer),
	"image":        step("image", "an OCI image layout from layers", []string{"layout", "digest"}, image),
	"index":        step("index", "an OCI image index layout from image layouts of different platforms", []string{"image", "layout", "digest"}, index),
	"archive":      step("archive", "an OCI archive (tar) of a layout", []string{"layout", "out"}, archive),
	"sbom":         step("sbom", "an SPDX 2.3 JSON SBOM of the binaries and Debian packages", []string{"go-mod", "debian-lock", "out"}, sbomStep),
	"deb-file":     step("deb-file", "one file of a Debian package, as an executable (a test tool, such as a qemu-user emulator)", []string{"deb", "path", "out"}, debFile),
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if c, ok := steps[args[0]]; ok {
			return c.Run(args[1:], stdout, stderr)
		}
	}
	var names []string
	for n := range steps {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(stderr, "usage: imagebuilder %s [flags]\n", strings.Join(names, "|"))
	return 2
}

func layerOutputs(fs *pflag.FlagSet) (out, info *string) {
	return fs.String("out", "", "output: the gzip layer"), fs.String("info", "", "output: the layer's info (JSON)")
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

func writeDigest(file string, d interface{ Digest() (v1.Hash, error) }) error {
	h, err := d.Digest()
	if err != nil {
		return err
	}
	return os.WriteFile(file, []byte(h.String()+"\n"), 0o644)
}

func baseLayer(fs *pflag.FlagSet) func() error {
	st := stampFlags(fs)
	lockFile := fs.String("debian-lock", "", "lock file pinning the Debian packages")
	debs := fs.StringArray("deb", nil, "a Debian package named in the lock (repeat)")
	out, info := layerOutputs(fs)
	return func() error {
		if err := st.resolve(); err != nil {
			return err
		}
		lock, err := imagebuilder.ReadLock(*lockFile)
		if err != nil {
			return err
		}
		matched, err := lock.MatchDebs(*debs)
		if err != nil {
			return err
		}
		gz, li, err := imagebuilder.BaseLayer(matched, st.time())
		if err != nil {
			return err
		}
		return writeLayer(*out, *info, gz, li)
	}
}

func binaryLayer(fs *pflag.FlagSet) func() error {
	st := stampFlags(fs)
	specs := fs.StringArray("binary", nil, "IMAGE_PATH=FILE: a static binary (repeat)")
	out, info := layerOutputs(fs)
	return func() error {
		if err := st.resolve(); err != nil {
			return err
		}
		var bins []imagebuilder.Binary
		for _, b := range *specs {
			imgPath, file, ok := strings.Cut(b, "=")
			if !ok {
				return cli.Usagef("--binary %q: want IMAGE_PATH=FILE", b)
			}
			bin, err := imagebuilder.ReadBinary(imgPath, file)
			if err != nil {
				return err
			}
			bins = append(bins, bin)
		}
		gz, li, err := imagebuilder.BinaryLayer(bins, st.time())
		if err != nil {
			return err
		}
		return writeLayer(*out, *info, gz, li)
	}
}

func image(fs *pflag.FlagSet) func() error {
	st := stampFlags(fs)
	layers := fs.StringArray("layer", nil, "LAYER.tar.gz=LAYER.json, bottom layer first (repeat)")
	entrypoint := fs.StringArray("entrypoint", nil, "entrypoint word (repeat; the first is the program)")
	title := fs.String("title", "kms", "image title")
	source := fs.String("source", "", "source repository URL")
	licenses := fs.String("licenses", "", "SPDX license expression of the project's code")
	layoutDir := fs.String("layout", "", "output: OCI image layout directory")
	digestFile := fs.String("digest", "", "output: the manifest digest, sha256:...")
	return func() error {
		if err := st.resolve(); err != nil {
			return err
		}
		var ls []imagebuilder.Layer
		for _, l := range *layers {
			gzFile, infoFile, ok := strings.Cut(l, "=")
			if !ok {
				return cli.Usagef("--layer %q: want LAYER.tar.gz=LAYER.json", l)
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
			Layers: ls, Entrypoint: *entrypoint, Created: st.time(), Annotations: anns,
		})
		if err != nil {
			return err
		}
		// No ref.name: this layout is a step towards the index, which has one.
		if err := imagebuilder.WriteLayout(*layoutDir, img, ""); err != nil {
			return err
		}
		return writeDigest(*digestFile, img)
	}
}

func index(fs *pflag.FlagSet) func() error {
	images := fs.StringArray("image", nil, "OCI image layout of one platform's image (repeat; the index lists them in this order)")
	layoutDir := fs.String("layout", "", "output: OCI image layout directory holding the index")
	digestFile := fs.String("digest", "", "output: the index digest, sha256:...")
	return func() error {
		tmp, err := os.MkdirTemp("", "layouts")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		var imgs []v1.Image
		for i, dir := range *images {
			copied := filepath.Join(tmp, strconv.Itoa(i))
			if err := imagebuilder.CopyLayout(dir, copied); err != nil {
				return err
			}
			img, err := imagebuilder.ReadImage(copied)
			if err != nil {
				return err
			}
			imgs = append(imgs, img)
		}
		idx, err := imagebuilder.Index(imgs)
		if err != nil {
			return err
		}
		m, err := idx.IndexManifest()
		if err != nil {
			return err
		}
		// TITLE:VERSION, so `podman load` names the image kms:v1.2.3 (it would
		// call an unnamed one by its digest, and a bare tag localhost/TAG).
		ref := m.Annotations[imagebuilder.AnnotationTitle] + ":" + m.Annotations[imagebuilder.AnnotationVersion]
		if err := imagebuilder.WriteLayout(*layoutDir, idx, ref); err != nil {
			return err
		}
		return writeDigest(*digestFile, idx)
	}
}

func archive(fs *pflag.FlagSet) func() error {
	layoutDir := fs.String("layout", "", "OCI image layout directory")
	out := fs.String("out", "", "output: OCI archive (tar of the layout)")
	return func() error {
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
}

func sbomStep(fs *pflag.FlagSet) func() error {
	st := stampFlags(fs)
	specs := fs.StringArray("binary", nil, "ARCH:IMAGE_PATH=FILE=PACKAGES: a Go binary of the linux/ARCH image and a file listing the import paths linked into it, one a line (repeat)")
	goModFile := fs.String("go-mod", "", "the main module's go.mod (module versions)")
	lockFile := fs.String("debian-lock", "", "lock file of the Debian packages in the base")
	name := fs.String("name", "kms", "what the SBOM describes")
	licenses := fs.String("licenses", "", "SPDX license expression of the project's code")
	out := fs.String("out", "", "output: SPDX 2.3 JSON")
	return func() error {
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
		for _, b := range *specs {
			arch, rest, ok := strings.Cut(b, ":")
			parts := strings.SplitN(rest, "=", 3)
			if !ok || len(parts) != 3 {
				return cli.Usagef("--binary %q: want ARCH:IMAGE_PATH=FILE=PACKAGES", b)
			}
			data, err := os.ReadFile(parts[1])
			if err != nil {
				return err
			}
			pkgs, err := os.ReadFile(parts[2])
			if err != nil {
				return err
			}
			doc.Binaries = append(doc.Binaries, sbom.Binary{Arch: arch, Path: parts[0], Data: data, Packages: strings.Fields(string(pkgs))})
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
}

func debFile(fs *pflag.FlagSet) func() error {
	deb := fs.String("deb", "", "the .deb")
	path := fs.String("path", "", "the file's path in the package, without a leading slash")
	out := fs.String("out", "", "output: the file, mode 0755")
	return func() error {
		b, err := os.ReadFile(*deb)
		if err != nil {
			return err
		}
		data, err := imagebuilder.DebFile(b, *path)
		if err != nil {
			return fmt.Errorf("%s: %w", *deb, err)
		}
		return os.WriteFile(*out, data, 0o755)
	}
}
