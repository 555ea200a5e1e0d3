package reproducible

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"
	"time"
)

// The same input gives the same bytes, with no name and no time in the
// header, and they decompress to the input.
func TestGzip(t *testing.T) {
	in := bytes.Repeat([]byte("kms "), 1000)
	a, err := Gzip(in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Gzip(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two compressions of the same input differ")
	}
	zr, err := gzip.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.Equal(time.Time{}) {
		t.Errorf("header has name %q, mtime %v; want neither", zr.Name, zr.ModTime)
	}
	out, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(out, in) {
		t.Errorf("decompressed %d bytes (%v), want the %d of the input", len(out), err, len(in))
	}
}
