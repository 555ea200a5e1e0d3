package main

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func imageOf(t *testing.T, hdrs ...*tar.Header) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(make([]byte, h.Size))
	}
	tw.Close()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestUnpackOwnersAndModes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("unpack sets owners: run as root")
	}
	dir := t.TempDir()
	img := imageOf(t,
		&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777},
		&tar.Header{Typeflag: tar.TypeDir, Name: "home/nonroot/", Mode: 0o700, Uid: 65532, Gid: 65532},
		&tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/kms", Mode: 0o755, Size: 3},
		&tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/localtime", Linkname: "/usr/share/zoneinfo/UTC"},
	)
	if err := unpack(img, dir); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]struct {
		mode fs.FileMode
		uid  uint32
	}{
		"tmp":           {fs.ModeDir | fs.ModeSticky | 0o777, 0},
		"home/nonroot":  {fs.ModeDir | 0o700, 65532},
		"usr/bin/kms":   {0o755, 0},
		"etc/localtime": {fs.ModeSymlink | 0o777, 0},
	} {
		st, err := os.Lstat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want.mode || st.Sys().(*syscall.Stat_t).Uid != want.uid {
			t.Errorf("%s: %v uid %d, want %v uid %d", p, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, want.mode, want.uid)
		}
	}
}

// A hostile image must not write outside the root filesystem through a
// symlink it ships.
func TestUnpackStaysInside(t *testing.T) {
	outside := t.TempDir()
	img := imageOf(t,
		&tar.Header{Typeflag: tar.TypeSymlink, Name: "escape", Linkname: outside},
		&tar.Header{Typeflag: tar.TypeReg, Name: "escape/pwned", Mode: 0o644, Size: 1},
	)
	// Either refusing the image or dropping the entry is fine; writing
	// through the link is not.
	unpack(img, t.TempDir())
	if _, err := os.Stat(filepath.Join(outside, "pwned")); err == nil {
		t.Error("file written outside the root filesystem")
	}
}
