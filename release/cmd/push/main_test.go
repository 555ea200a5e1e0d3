package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/cmdkms/kms/release/imagebuilder/imagetest"
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
	host := imagetest.Registry(t)
	dir, _, digest := imagetest.Layout(t)
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
