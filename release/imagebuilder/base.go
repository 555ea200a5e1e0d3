package imagebuilder

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"time"
)

// NonrootUID is the user the image runs as, the same id as distroless's
// nonroot so manifests written for distroless images (runAsUser 65532) fit.
const NonrootUID = 65532

const passwd = `root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
`

const group = `root:x:0:
nobody:x:65534:
nonroot:x:65532:
`

// Only "files" and "dns": the image has no NSS modules, and Go's resolver
// reads the hosts line to order /etc/hosts before DNS.
const nsswitch = `passwd: files
group: files
hosts: files dns
`

// CABundle is where the base puts the concatenated CA certificates, the path
// Go, OpenSSL and most TLS stacks look at on Debian.
const CABundle = "etc/ssl/certs/ca-certificates.crt"

// debContent installs the parts of one Debian package that the base keeps.
// Packages are not installed with dpkg: their maintainer scripts would need
// a shell, and only data files are wanted.
type debContent func(fs layerFS, deb Deb) error

var baseContent = map[string]debContent{
	"ca-certificates": caCertificates,
	"tzdata":          tzdata,
}

// caCertificates builds the bundle update-ca-certificates would make in the
// postinst: every certificate the package ships, concatenated in path order.
func caCertificates(fs layerFS, deb Deb) error {
	files, err := debFiles(deb.Data, func(p string) bool {
		return (strings.HasPrefix(p, "usr/share/ca-certificates/") && strings.HasSuffix(p, ".crt")) ||
			p == "usr/share/doc/ca-certificates/copyright"
	})
	if err != nil {
		return err
	}
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	var bundle bytes.Buffer
	for _, f := range files {
		if strings.HasSuffix(f.path, "/copyright") {
			fs.file(f.path, 0o644, f.data)
			continue
		}
		if f.linkname != "" {
			return fmt.Errorf("%s: certificate is a symlink", f.path)
		}
		bundle.Write(f.data)
		if !bytes.HasSuffix(f.data, []byte("\n")) {
			bundle.WriteByte('\n')
		}
	}
	if bundle.Len() == 0 {
		return fmt.Errorf("no certificates found")
	}
	fs.file(CABundle, 0o644, bundle.Bytes())
	return nil
}

func tzdata(fs layerFS, deb Deb) error {
	files, err := debFiles(deb.Data, func(p string) bool {
		return strings.HasPrefix(p, "usr/share/zoneinfo/") || p == "usr/share/doc/tzdata/copyright"
	})
	if err != nil {
		return err
	}
	n := 0
	for _, f := range files {
		if f.linkname != "" {
			fs.symlink(f.path, f.linkname)
			continue
		}
		fs.file(f.path, 0o644, f.data)
		if strings.HasSuffix(f.path, "/UTC") {
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("no zoneinfo/UTC found")
	}
	return nil
}

// BaseLayer returns the distroless-equivalent root filesystem as a gzip
// layer: users, groups, writable /tmp and the nonroot home, CA certificates
// and zoneinfo. No shell, no package manager, no libc: the binaries put on
// it must be static.
func BaseLayer(debs []Deb, mtime time.Time) ([]byte, LayerInfo, error) {
	fs, err := baseFS(debs)
	if err != nil {
		return nil, LayerInfo{}, err
	}
	info := LayerInfo{}
	var names []string
	for _, d := range debs {
		names = append(names, d.Name+"="+d.Version)
		// Packages of architecture "all" fit every image; one built for a
		// machine ties the layer to it (Debian's amd64 and arm64 are the OCI
		// names too), and Image refuses it under binaries of another.
		if d.Architecture == "all" || d.Architecture == "" {
			continue
		}
		if info.Architecture != "" && info.Architecture != d.Architecture {
			return nil, info, fmt.Errorf("packages of two architectures, %s and %s", info.Architecture, d.Architecture)
		}
		info.Architecture = d.Architecture
	}
	sort.Strings(names)
	info.CreatedBy = fmt.Sprintf("kms imagebuilder: base (users root, nobody, nonroot; %s)", strings.Join(names, " "))
	gz, err := fs.gzipLayer(mtime.UTC())
	return gz, info, err
}

func baseFS(debs []Deb) (layerFS, error) {
	fs := layerFS{}
	fs.dir("etc", 0o755, 0, 0)
	fs.file("etc/passwd", 0o644, []byte(passwd))
	fs.file("etc/group", 0o644, []byte(group))
	fs.file("etc/nsswitch.conf", 0o644, []byte(nsswitch))
	fs.dir("root", 0o700, 0, 0)
	fs.dir("home", 0o755, 0, 0)
	fs.dir("home/nonroot", 0o700, NonrootUID, NonrootUID)
	fs.dir("tmp", 0o1777, 0, 0)
	for _, d := range debs {
		install, ok := baseContent[d.Name]
		if !ok {
			return nil, fmt.Errorf("the base does not know what to take from package %s", d.Name)
		}
		if err := install(fs, d); err != nil {
			return nil, fmt.Errorf("%s %s: %w", d.Name, d.Version, err)
		}
	}
	for name := range baseContent {
		found := false
		for _, d := range debs {
			found = found || d.Name == name
		}
		if !found {
			return nil, fmt.Errorf("package %s is missing from the lock", name)
		}
	}
	return fs, nil
}
