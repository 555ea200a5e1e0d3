package packages

import (
	"archive/tar"
	"bytes"
	"crypto/md5"
	"fmt"
	"strings"
	"time"

	"github.com/cmdkms/kms/release/reproducible"
)

// Deb returns the .deb: an ar archive of debian-binary, control.tar.gz and
// data.tar.gz, in that order (deb(5)).
func (p Package) Deb() ([]byte, error) {
	debArch, _, err := p.arch()
	if err != nil {
		return nil, err
	}
	entries, err := p.entries(File{Path: "/usr/share/lintian/overrides/" + Name, Mode: 0o644, Data: lintianOverrides})
	if err != nil {
		return nil, err
	}
	data, err := p.tarGz(entries)
	if err != nil {
		return nil, err
	}
	var md5sums strings.Builder
	size := int64(0)
	for _, e := range entries {
		// Installed-Size counts KiB per file, rounded up, as dpkg-gencontrol does.
		size += (int64(len(e.data)) + 1023) / 1024
		if !e.dir {
			fmt.Fprintf(&md5sums, "%x  %s\n", md5.Sum(e.data), e.path[1:])
		}
	}
	control := fmt.Sprintf(`Package: %s
Version: %s
Architecture: %s
Maintainer: %s
Installed-Size: %d
Section: admin
Priority: optional
Homepage: %s
Description: %s
%s
`, Name, PackageVersion(p.Version), debArch, maintainer, size, homepage, summary, debDescription(description))
	ctl, err := p.tarGz([]entry{
		{path: "/control", mode: 0o644, data: []byte(control)},
		{path: "/md5sums", mode: 0o644, data: []byte(md5sums.String())},
		{path: "/postinst", mode: 0o755, data: []byte(debPostinst)},
		{path: "/postrm", mode: 0o755, data: []byte(debPostrm)},
		{path: "/prerm", mode: 0o755, data: []byte(debPrerm)},
	})
	if err != nil {
		return nil, err
	}
	var ar bytes.Buffer
	ar.WriteString("!<arch>\n")
	for _, m := range []struct {
		name string
		data []byte
	}{
		{"debian-binary", []byte("2.0\n")},
		{"control.tar.gz", ctl},
		{"data.tar.gz", data},
	} {
		// name, mtime, uid, gid, mode (octal), size, magic: ar(5)'s fixed columns.
		fmt.Fprintf(&ar, "%-16s%-12d%-6d%-6d%-8o%-10d`\n", m.name, p.Time.Unix(), 0, 0, 0o100644, len(m.data))
		ar.Write(m.data)
		if len(m.data)%2 == 1 {
			ar.WriteByte('\n')
		}
	}
	return ar.Bytes(), nil
}

// debDescription formats the extended description as deb-control(5) wants:
// each line indented by one space, empty lines as " .".
func debDescription(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if l == "" {
			l = "."
		}
		lines[i] = " " + l
	}
	return strings.Join(lines, "\n")
}

// tarGz writes entries (sorted, parents first) as a gzip tar with "./"
// names, as dpkg-deb does, owned by root.
func (p Package) tarGz(entries []entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := p.Time.UTC().Truncate(time.Second)
	all := append([]entry{{path: "/", dir: true, mode: 0o755}}, entries...)
	for _, e := range all {
		h := &tar.Header{
			Name:    "." + e.path,
			Mode:    int64(e.mode.Perm()),
			ModTime: mtime,
			Uname:   "root",
			Gname:   "root",
			Format:  tar.FormatGNU,
		}
		if e.dir {
			h.Typeflag = tar.TypeDir
			h.Name = strings.TrimSuffix(h.Name, "/") + "/"
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", e.path, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("%s: %w", e.path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return reproducible.Gzip(buf.Bytes())
}
