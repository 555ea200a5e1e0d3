package imagebuilder

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/ulikunitz/xz"
)

// debMember returns the contents of the named member of a .deb (an ar
// archive). dpkg-deb is not used so that the builder runs the same inside
// Bazel's sandbox as outside, with nothing from the host but Go.
func debMember(deb []byte, name string) ([]byte, error) {
	const magic = "!<arch>\n"
	if !bytes.HasPrefix(deb, []byte(magic)) {
		return nil, errors.New("not an ar archive")
	}
	rest := deb[len(magic):]
	for len(rest) >= 60 {
		hdr := rest[:60]
		if string(hdr[58:60]) != "`\n" {
			return nil, errors.New("corrupt ar member header")
		}
		member := strings.TrimSuffix(strings.TrimSpace(string(hdr[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 || size > int64(len(rest)-60) {
			return nil, fmt.Errorf("corrupt ar member size for %q", member)
		}
		body := rest[60 : 60+size]
		if member == name {
			return body, nil
		}
		// Members are padded to an even offset.
		next := 60 + size + size%2
		if next > int64(len(rest)) {
			break
		}
		rest = rest[next:]
	}
	return nil, fmt.Errorf("member %q not found", name)
}

// debData opens the data archive of a .deb as a tar stream.
func debData(deb []byte) (*tar.Reader, error) {
	if b, err := debMember(deb, "data.tar.xz"); err == nil {
		r, err := xz.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		return tar.NewReader(bufio.NewReader(r)), nil
	}
	if b, err := debMember(deb, "data.tar.gz"); err == nil {
		r, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		return tar.NewReader(r), nil
	}
	if b, err := debMember(deb, "data.tar"); err == nil {
		return tar.NewReader(bytes.NewReader(b)), nil
	}
	return nil, errors.New("no data.tar.xz, data.tar.gz or data.tar member (other compressions are not supported)")
}

// debFile is one regular file or symlink from a package's data archive.
type debFile struct {
	path     string // relative, no leading "./"
	mode     int64
	data     []byte
	linkname string // set for symlinks
}

// debFiles returns the regular files and symlinks of a .deb whose paths
// satisfy keep. Directories are not returned: the layer writer creates
// them with fixed attributes.
func debFiles(deb []byte, keep func(path string) bool) ([]debFile, error) {
	tr, err := debData(deb)
	if err != nil {
		return nil, err
	}
	var out []debFile
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		p := strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/")
		if p == "" || h.Typeflag == tar.TypeDir || !keep(p) {
			continue
		}
		switch h.Typeflag {
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			out = append(out, debFile{path: p, mode: h.Mode & 0o7777, data: b})
		case tar.TypeSymlink:
			out = append(out, debFile{path: p, mode: 0o777, linkname: h.Linkname})
		default:
			return nil, fmt.Errorf("%s: unsupported tar entry type %q", p, h.Typeflag)
		}
	}
}

// DebFile returns the regular file at path (e.g. "usr/bin/tool") from a
// .deb's data archive.
func DebFile(deb []byte, path string) ([]byte, error) {
	files, err := debFiles(deb, func(p string) bool { return p == path })
	if err != nil {
		return nil, err
	}
	if len(files) != 1 || files[0].linkname != "" {
		return nil, fmt.Errorf("the package has no regular file %s", path)
	}
	return files[0].data, nil
}
