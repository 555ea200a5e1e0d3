package imagebuilder

import (
	"archive/tar"
	"bytes"
	"encoding/json"
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
	"github.com/google/go-containerregistry/pkg/v1/partial"
)

// WriteLayout writes an image or an image index as the only entry of a new
// OCI image layout in dir, which must be empty or absent. A non-empty
// refName becomes its org.opencontainers.image.ref.name, the name
// `podman load` gives it and skopeo selects with oci:DIR:NAME.
func WriteLayout(dir string, root partial.Describable, refName string) error {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s is not empty", dir)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	var opts []layout.Option
	if refName != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{AnnotationRefName: refName}))
	}
	switch r := root.(type) {
	case v1.ImageIndex:
		err = p.AppendIndex(r, opts...)
	case v1.Image:
		err = p.AppendImage(r, opts...)
	default:
		err = fmt.Errorf("cannot write a %T", root)
	}
	if err != nil {
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

// rootDescriptor returns the only entry of a layout's index.json.
func rootDescriptor(dir string) (v1.ImageIndex, v1.Descriptor, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	if len(m.Manifests) != 1 {
		return nil, v1.Descriptor{}, fmt.Errorf("%s holds %d entries, want 1", dir, len(m.Manifests))
	}
	return idx, m.Manifests[0], nil
}

// CopyLayout copies a layout into dst (new), reading through symlinks:
// Bazel's sandbox presents a directory input as a tree of symlinks, and
// go-containerregistry refuses to read a blob that is one.
func CopyLayout(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
}

// ReadImage returns the image of a layout that holds one image.
func ReadImage(dir string) (v1.Image, error) {
	idx, d, err := rootDescriptor(dir)
	if err != nil {
		return nil, err
	}
	if !d.MediaType.IsImage() {
		return nil, fmt.Errorf("%s holds a %s, not an image", dir, d.MediaType)
	}
	return idx.Image(d.Digest)
}

// ReadIndex returns the image index of a layout that holds one, as the
// release image's layout does.
func ReadIndex(dir string) (v1.ImageIndex, error) {
	idx, d, err := rootDescriptor(dir)
	if err != nil {
		return nil, err
	}
	if !d.MediaType.IsIndex() {
		return nil, fmt.Errorf("%s holds a %s, not an image index", dir, d.MediaType)
	}
	return idx.ImageIndex(d.Digest)
}

// PlatformImage returns the image of an index for linux/ARCH.
func PlatformImage(idx v1.ImageIndex, arch string) (v1.Image, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range m.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == arch {
			return idx.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("the index has no linux/%s image", arch)
}

// LayoutCreated returns the creation time of a layout's image or index, from
// its org.opencontainers.image.created annotation. It reads the JSON itself
// instead of going through go-containerregistry, which refuses blobs that
// are symlinks, as Bazel's sandbox presents them.
func LayoutCreated(dir string) (time.Time, error) {
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return time.Time{}, err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return time.Time{}, err
	}
	if len(idx.Manifests) != 1 {
		return time.Time{}, fmt.Errorf("%s holds %d entries, want 1", dir, len(idx.Manifests))
	}
	h := idx.Manifests[0].Digest
	if b, err = os.ReadFile(filepath.Join(dir, "blobs", h.Algorithm, h.Hex)); err != nil {
		return time.Time{}, err
	}
	// Manifests and indexes keep their annotations in the same field.
	var root struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(b, &root); err != nil {
		return time.Time{}, err
	}
	created, ok := root.Annotations[AnnotationCreated]
	if !ok {
		return time.Time{}, fmt.Errorf("%s: no %s annotation", dir, AnnotationCreated)
	}
	return time.Parse(time.RFC3339, created)
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
