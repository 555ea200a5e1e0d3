// Package reproducible holds what the release's byte-for-byte
// reproducible archives (image layers, .deb members, changelogs) share.
package reproducible

import (
	"bytes"
	"compress/gzip"
)

// Gzip compresses b with an empty gzip header (no name, mtime 0), so the
// output depends only on b and the Go version.
func Gzip(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
