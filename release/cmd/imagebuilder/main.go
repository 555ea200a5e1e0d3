// Command imagebuilder writes the release image as an OCI image layout, an
// OCI archive of that layout and an SPDX SBOM. Bazel runs it from the
// kms_image rule (release/image.bzl); it takes every input as a file or flag
// and reads no environment, so equal inputs give an equal image.
package main

import (
	"bufio"
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

func main() {
	var (
		debs, bins, entrypoint list
		lockFile               = flag.String("debian-lock", "", "lock file pinning the Debian packages (required)")
		name                   = flag.String("name", "kms", "image title, also the SBOM's name")
		version                = flag.String("version", "dev", "image version")
		revision               = flag.String("revision", "", "source revision (git commit)")
		source                 = flag.String("source", "", "source repository URL")
		licenses               = flag.String("licenses", "", "SPDX license expression of the project's code")
		epoch                  = flag.Int64("source-date-epoch", 0, "creation time and file mtime, seconds since 1970")
		statusFile             = flag.String("stamp-status-file", "", "Bazel stable-status.txt; its "+keyVersion+", "+keyCommit+" and "+keyEpoch+" override the flags")
		layoutDir              = flag.String("layout", "", "output: OCI image layout directory (required)")
		archive                = flag.String("archive", "", "output: OCI archive (tar of the layout)")
		sbomFile               = flag.String("sbom", "", "output: SPDX 2.3 JSON SBOM")
		digestFile             = flag.String("digest", "", "output: the manifest digest, sha256:...")
	)
	flag.Var(&debs, "deb", "a Debian package named in the lock (repeat)")
	flag.Var(&bins, "binary", "IMAGE_PATH=FILE: a static binary for the app layer (repeat)")
	flag.Var(&entrypoint, "entrypoint", "entrypoint word (repeat; the first is the program)")
	flag.Parse()
	if *lockFile == "" || *layoutDir == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *statusFile != "" {
		st, err := readStatus(*statusFile)
		check(err)
		if v, ok := st[keyVersion]; ok {
			*version = v
		}
		if v, ok := st[keyCommit]; ok {
			*revision = v
		}
		v, ok := st[keyEpoch]
		if !ok {
			fail(fmt.Errorf("%s has no %s: stamp with --workspace_status_command=release/workspace_status.sh", *statusFile, keyEpoch))
		}
		*epoch, err = strconv.ParseInt(v, 10, 64)
		check(err)
	}
	created := time.Unix(*epoch, 0).UTC()

	lock, err := imagebuilder.ReadLock(*lockFile)
	check(err)
	matched, err := lock.MatchDebs(debs)
	check(err)
	var binaries []imagebuilder.Binary
	for _, b := range bins {
		imgPath, file, ok := strings.Cut(b, "=")
		if !ok {
			fail(fmt.Errorf("--binary %q: want IMAGE_PATH=FILE", b))
		}
		bin, err := imagebuilder.ReadBinary(imgPath, file)
		check(err)
		binaries = append(binaries, bin)
	}

	anns := map[string]string{
		imagebuilder.AnnotationTitle:   *name,
		imagebuilder.AnnotationVersion: *version,
	}
	for k, v := range map[string]string{
		imagebuilder.AnnotationRevision: *revision,
		imagebuilder.AnnotationSource:   *source,
		imagebuilder.AnnotationLicenses: *licenses,
	} {
		if v != "" {
			anns[k] = v
		}
	}
	img, err := imagebuilder.Build(imagebuilder.Options{
		Debs:        matched,
		Binaries:    binaries,
		Entrypoint:  entrypoint,
		Created:     created,
		Annotations: anns,
	})
	check(err)
	check(imagebuilder.WriteLayout(*layoutDir, img, *version))
	digest, err := img.Digest()
	check(err)

	if *archive != "" {
		f, err := os.Create(*archive)
		check(err)
		check(imagebuilder.WriteArchive(*layoutDir, f, created))
		check(f.Close())
	}
	if *sbomFile != "" {
		doc := sbom.Image{Name: *name, Version: *version, Licenses: *licenses, Created: created}
		for _, b := range binaries {
			doc.Binaries = append(doc.Binaries, sbom.Binary{Path: b.Path, Data: b.Data})
		}
		for _, d := range matched {
			doc.Debs = append(doc.Debs, sbom.DebPackage{Name: d.Name, Version: d.Version, Architecture: d.Architecture, SHA256: d.SHA256})
		}
		f, err := os.Create(*sbomFile)
		check(err)
		check(sbom.Write(f, doc))
		check(f.Close())
	}
	if *digestFile != "" {
		check(os.WriteFile(*digestFile, []byte(digest.String()+"\n"), 0o644))
	}
}

// readStatus parses Bazel's "KEY value" status file.
func readStatus(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, _ := strings.Cut(s.Text(), " ")
		m[k] = v
	}
	return m, s.Err()
}

func check(err error) {
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "imagebuilder:", err)
	os.Exit(1)
}
