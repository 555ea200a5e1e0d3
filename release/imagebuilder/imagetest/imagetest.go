// Package imagetest gives the release tools' tests what they share: a real
// registry on loopback (go-containerregistry's own) and a random image
// index written as an OCI layout, as the release writes its own.
package imagetest

import (
	"io"
	"log"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/cmdkms/kms/release/imagebuilder"
)

// Registry starts a registry on loopback for the test and returns its host:port.
func Registry(t testing.TB) string {
	t.Helper()
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	return strings.TrimPrefix(reg.URL, "http://")
}

// Layout writes a random index of two images (two layers each) as an OCI
// layout and returns its directory, the index and its digest.
func Layout(t testing.TB) (string, v1.ImageIndex, v1.Hash) {
	t.Helper()
	idx, err := random.Index(512, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := imagebuilder.WriteLayout(dir, idx, ""); err != nil {
		t.Fatal(err)
	}
	digest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return dir, idx, digest
}
