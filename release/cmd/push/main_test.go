package main

import (
	"bytes"
	"io"
	"log"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/cmdkms/kms/release/imagebuilder"
)

func TestRepositoryNeedsHost(t *testing.T) {
	for _, repo := range []string{"kms", "kms:dev", "team/kms:dev"} {
		if _, err := push(t.TempDir(), repo); err == nil || !strings.Contains(err.Error(), "registry host") {
			t.Errorf("%s: %v", repo, err)
		}
	}
}

// A push to go-containerregistry's own registry on loopback, by tag and by
// digest only: the reference printed is the index's digest, and the tag
// names it.
func TestPush(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
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
	want := host + "/kms@" + digest.String()
	for _, repo := range []string{host + "/kms:dev", host + "/kms"} {
		var out, errOut bytes.Buffer
		if code := run([]string{"--layout", dir, "--repository", repo}, &out, &errOut); code != 0 || strings.TrimSpace(out.String()) != want {
			t.Fatalf("push --repository %s: exit %d, %q, %s; want %s", repo, code, out.String(), errOut.String(), want)
		}
	}
	tag, err := name.NewTag(host + "/kms:dev")
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(tag)
	if err != nil || desc.Digest != digest {
		t.Errorf("the tag names %v (%v), want %s", desc, err, digest)
	}
}
