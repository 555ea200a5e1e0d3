package main

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// unpack writes the image's flattened filesystem into dir with the owners
// and modes the tar headers give (so it must run as root), the way a
// container runtime would. os.Root keeps every write inside dir, whatever
// the image's symlinks point at.
func unpack(img v1.Image, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "/"))
		if name == "." {
			continue
		}
		mode := h.FileInfo().Mode() & (fs.ModePerm | fs.ModeSticky | fs.ModeSetuid | fs.ModeSetgid)
		// Layers are flattened top layer first, so a file can come before
		// the lower layer's entry for its directory; runtimes create such
		// parents root-owned 0755 too.
		if h.Typeflag != tar.TypeDir {
			if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
				return err
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return err
			}
			if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
				return err
			}
			continue
		default:
			return fmt.Errorf("%s: unexpected entry type %q in the image", name, h.Typeflag)
		}
		if err := root.Chown(name, h.Uid, h.Gid); err != nil {
			return err
		}
		// After chown, which clears set-id bits.
		if err := root.Chmod(name, mode); err != nil {
			return err
		}
	}
}
