package imagebuilder

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/cmdkms/kms/release/reproducible"
)

// fsEntry is one entry of a layer. Only the attributes here reach the tar
// header; everything else (names of owners, access times, ...) is left out
// so the bytes depend on nothing but the content.
type fsEntry struct {
	typ      byte // tar.TypeReg, tar.TypeDir or tar.TypeSymlink
	mode     int64
	uid, gid int
	data     []byte
	linkname string
}

// layerFS collects the entries of one layer by path.
type layerFS map[string]fsEntry

func (fs layerFS) dir(p string, mode int64, uid, gid int) {
	fs[p] = fsEntry{typ: tar.TypeDir, mode: mode, uid: uid, gid: gid}
}

func (fs layerFS) file(p string, mode int64, data []byte) {
	fs[p] = fsEntry{typ: tar.TypeReg, mode: mode, data: data}
}

func (fs layerFS) symlink(p, target string) {
	fs[p] = fsEntry{typ: tar.TypeSymlink, mode: 0o777, linkname: target}
}

// tarBytes writes the entries sorted by path, parents first, each missing
// parent directory added as 0755 root:root, every mtime set to mtime.
func (fs layerFS) tarBytes(mtime time.Time) ([]byte, error) {
	all := layerFS{}
	for p, e := range fs {
		if p == "" || strings.HasPrefix(p, "/") || path.Clean(p) != p {
			return nil, fmt.Errorf("layer path %q is not clean and relative", p)
		}
		all[p] = e
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := fs[d]; !ok {
				all[d] = fsEntry{typ: tar.TypeDir, mode: 0o755}
			} else if fs[d].typ != tar.TypeDir {
				return nil, fmt.Errorf("%q is inside %q, which is not a directory", p, d)
			}
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := all[p]
		h := &tar.Header{
			Typeflag: e.typ,
			Name:     p,
			Mode:     e.mode,
			Uid:      e.uid,
			Gid:      e.gid,
			ModTime:  mtime,
			Linkname: e.linkname,
			Format:   tar.FormatPAX,
		}
		switch e.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeReg:
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// LayerInfo travels next to a layer file from the step that made it to the
// step that assembles the image.
type LayerInfo struct {
	// CreatedBy becomes the layer's history entry.
	CreatedBy string `json:"created_by"`
	// Architecture is set for layers with binaries (from their ELF headers).
	Architecture string `json:"architecture,omitempty"`
	// Executables are the absolute paths of the binaries in the layer.
	Executables []string `json:"executables,omitempty"`
}

// gzipLayer returns the entries as the bytes of an OCI gzip layer.
func (fs layerFS) gzipLayer(mtime time.Time) ([]byte, error) {
	t, err := fs.tarBytes(mtime)
	if err != nil {
		return nil, err
	}
	return reproducible.Gzip(t)
}

// OpenLayer reads a layer file written from BaseLayer or BinaryLayer.
func OpenLayer(gz []byte) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.OCILayer))
}
