// Package packages writes kms's .deb and .rpm packages byte-reproducibly:
// entries sorted by path, every mtime the release time (SOURCE_DATE_EPOCH),
// owners root (uid and gid 0), compression headers without names or times.
//
// The .rpm is written by github.com/google/rpmpack. The .deb is written here:
// it is an ar archive of three members (debian-binary, control.tar.gz,
// data.tar.gz), a few dozen lines with archive/tar and compress/gzip, while
// the Go libraries that write debs either shell out to dpkg-deb or stamp the
// current time into the ar headers.
//
// The maintainer scripts (scripts/) never create, change or remove the
// keyring: keys are the operator's.
package packages

import (
	_ "embed"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/cmdkms/kms/release/reproducible"
)

// Name is the packages' name.
const Name = "kms"

// KeyringDir is the directory of the operator's keyring (/etc/kms/kek,
// docs/systemd.md). The operator makes it (`install -d -m 0700 /etc/kms`);
// the packages own nothing in it, not even the directory, so neither dpkg
// nor rpm ever removes anything there.
const KeyringDir = "/etc/kms"

// File is one file of a package, by its absolute path on the installed
// system.
type File struct {
	Path string
	Mode fs.FileMode // permission bits
	Data []byte
}

// Package is what both formats are made from.
type Package struct {
	Version string    // the release version as `kms --version` says it (git describe)
	Arch    string    // GOARCH: amd64 or arm64
	Time    time.Time // every mtime, and the build time
	Files   []File
}

const (
	maintainer  = "kms maintainers <kms@cmdkms.invalid>"
	homepage    = "https://github.com/cmdkms/kms"
	license     = "Apache-2.0"
	summary     = "Kubernetes envelope-encryption plugin with a key from any command"
	description = `kms is a KMS v1 and v2 plugin daemon for kube-apiserver. It encrypts the
API server's data encryption keys with a key-encryption key (KEK) that an
operator-named command prints, caches it, refreshes it in the background and
purges it after repeated failures. kms.socket and kms.service run it under
systemd; the package never creates, changes or removes the keyring.`
)

//go:embed copyright
var copyright []byte

//go:embed lintian-overrides
var lintianOverrides []byte

//go:embed scripts/deb-postinst
var debPostinst string

//go:embed scripts/deb-prerm
var debPrerm string

//go:embed scripts/deb-postrm
var debPostrm string

//go:embed scripts/rpm-post
var rpmPost string

//go:embed scripts/rpm-preun
var rpmPreun string

//go:embed scripts/rpm-postun
var rpmPostun string

// release is what a release tag looks like in git describe: vX.Y...
var release = regexp.MustCompile(`^v?[0-9]+\.[0-9]`)

// PackageVersion turns a git describe version into one both dpkg and rpm
// accept and order: without the tag's leading "v", "-" (which both reserve
// for the revision) as "+", and "0~" before anything that is not a release
// ("devel", a commit hash), so it sorts before every release.
func PackageVersion(v string) string {
	isRelease := release.MatchString(v)
	v = strings.ReplaceAll(strings.TrimPrefix(v, "v"), "-", "+")
	if !isRelease {
		v = "0~" + v
	}
	return v
}

// entry is a file or directory of the payload.
type entry struct {
	path string // absolute, clean
	dir  bool
	mode fs.FileMode
	data []byte
}

// docDir holds the docs, the copyright and the changelog.
const docDir = "/usr/share/doc/" + Name

// changelog is the package's changelog, one entry for its version, in
// deb-changelog(5)'s format (gzipped, as Debian policy wants it).
func (p Package) changelog() ([]byte, error) {
	return reproducible.Gzip([]byte(fmt.Sprintf(`%s (%s) unstable; urgency=medium

  * Release %s of kms.

 -- %s  %s
`, Name, PackageVersion(p.Version), p.Version, maintainer, p.Time.UTC().Format(time.RFC1123Z))))
}

// entries returns the files, those every package has (copyright,
// changelog, and extra for this format), and every directory above them
// (0755), sorted by path so parents come first.
func (p Package) entries(extra ...File) ([]entry, error) {
	changelog, err := p.changelog()
	if err != nil {
		return nil, err
	}
	files := append([]File{
		{Path: docDir + "/copyright", Mode: 0o644, Data: copyright},
		{Path: docDir + "/changelog.gz", Mode: 0o644, Data: changelog},
	}, extra...)
	byPath := map[string]entry{}
	for _, f := range append(files, p.Files...) {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return nil, fmt.Errorf("package path %q is not clean and absolute", f.Path)
		}
		if _, dup := byPath[f.Path]; dup {
			return nil, fmt.Errorf("package path %q given twice", f.Path)
		}
		if f.Path == KeyringDir || strings.HasPrefix(f.Path, KeyringDir+"/") {
			return nil, fmt.Errorf("%s: the package ships nothing in %s, the operator's keyring directory", f.Path, KeyringDir)
		}
		byPath[f.Path] = entry{path: f.Path, mode: f.Mode.Perm(), data: f.Data}
	}
	for p := range byPath {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if e, ok := byPath[d]; !ok {
				byPath[d] = entry{path: d, dir: true, mode: 0o755}
			} else if !e.dir {
				return nil, fmt.Errorf("%q is inside %q, which is a file", p, d)
			}
		}
	}
	all := make([]entry, 0, len(byPath))
	for _, e := range byPath {
		all = append(all, e)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].path < all[j].path })
	return all, nil
}

// ownDir says whether a directory is the package's own rather than the
// system's.
func ownDir(p string) bool {
	for _, d := range []string{"/usr/share/kms", "/usr/share/doc/kms"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// osArch maps GOARCH to each format's architecture name.
var osArch = map[string]struct{ deb, rpm string }{
	"amd64": {"amd64", "x86_64"},
	"arm64": {"arm64", "aarch64"},
}

func (p Package) arch() (deb, rpm string, err error) {
	a, ok := osArch[p.Arch]
	if !ok {
		return "", "", fmt.Errorf("architecture %q: want amd64 or arm64", p.Arch)
	}
	return a.deb, a.rpm, nil
}

// DebName and RPMName are the files' conventional names.
func (p Package) DebName() string {
	return fmt.Sprintf("%s_%s_%s.deb", Name, PackageVersion(p.Version), osArch[p.Arch].deb)
}

func (p Package) RPMName() string {
	return fmt.Sprintf("%s-%s-%s.%s.rpm", Name, PackageVersion(p.Version), rpmRelease, osArch[p.Arch].rpm)
}
