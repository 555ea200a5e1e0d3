package imagebuilder

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// WriteLayout writes img as the only image of a new OCI image layout in dir,
// which must be empty or absent. refName becomes the image's
// org.opencontainers.image.ref.name, the tag tools like skopeo select with
// oci:DIR:TAG.
func WriteLayout(dir string, img v1.Image, refName string) error {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s is not empty", dir)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{AnnotationRefName: refName})); err != nil {
		return err
	}
	// go-containerregistry writes blobs 0600 and index.json 0755; make the
	// layout readable by whoever loads it and executable by nobody.
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(p, mode)
	})
}

// ReadLayout returns the only image of an OCI image layout.
func ReadLayout(dir string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(m.Manifests) != 1 {
		return nil, fmt.Errorf("%s holds %d manifests, want 1", dir, len(m.Manifests))
	}
	return idx.Image(m.Manifests[0].Digest)
}

// LayoutCreated returns the creation time of the only image of a layout.
// It reads the JSON itself instead of going through go-containerregistry,
// which refuses blobs that are symlinks, as Bazel's sandbox presents them.
func LayoutCreated(dir string) (time.Time, error) {
	readBlob := func(h v1.Hash) ([]byte, error) {
		return os.ReadFile(filepath.Join(dir, "blobs", h.Algorithm, h.Hex))
	}
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return time.Time{}, err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return time.Time{}, err
	}
	if len(idx.Manifests) != 1 {
		return time.Time{}, fmt.Errorf("%s holds %d manifests, want 1", dir, len(idx.Manifests))
	}
	if b, err = readBlob(idx.Manifests[0].Digest); err != nil {
		return time.Time{}, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(b))
	if err != nil {
		return time.Time{}, err
	}
	if b, err = readBlob(m.Config.Digest); err != nil {
		return time.Time{}, err
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(b))
	if err != nil {
		return time.Time{}, err
	}
	return cf.Created.Time, nil
}

// WriteArchive writes the layout in dir as an OCI archive: an uncompressed
// tar of the layout with entries in path order, root-owned, all with the
// given mtime, so equal layouts give equal archives. Symlinks are followed:
// Bazel's sandbox presents the files of a directory input as links.
func WriteArchive(dir string, w io.Writer, mtime time.Time) error {
	tw := tar.NewWriter(w)
	if err := archiveDir(tw, dir, "", mtime); err != nil {
		return err
	}
	return tw.Close()
}

func archiveDir(tw *tar.Writer, root, rel string, mtime time.Time) error {
	entries, err := os.ReadDir(filepath.Join(root, rel))
	if err != nil {
		return err
	}
	// ReadDir sorts by name; the archive lists a directory before its content.
	for _, e := range entries {
		name := path.Join(rel, e.Name())
		p := filepath.Join(root, name)
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: name, ModTime: mtime, Format: tar.FormatPAX}
		switch {
		case st.IsDir():
			h.Typeflag, h.Mode, h.Name = tar.TypeDir, 0o755, name+"/"
		case st.Mode().IsRegular():
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, st.Size()
		default:
			return fmt.Errorf("%s: unexpected file type in layout", p)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if st.IsDir() {
			if err := archiveDir(tw, root, name, mtime); err != nil {
				return err
			}
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
