package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/cmdkms/kms/release/imagebuilder/imagetest"
)

// An index in go-containerregistry's own registry on loopback checks
// against its layout, and not against another's; a registry that is not on
// loopback is refused before anything is sent.
func TestPullcheck(t *testing.T) {
	host := imagetest.Registry(t)
	var refs, layouts []string
	for range 2 {
		dir, idx, digest := imagetest.Layout(t)
		ref, err := name.NewDigest(host + "/kms@" + digest.String())
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteIndex(ref, idx); err != nil {
			t.Fatal(err)
		}
		refs, layouts = append(refs, ref.String()), append(layouts, dir)
	}
	check := func(layout, ref string) (int, string) {
		var out, errOut bytes.Buffer
		code := run([]string{"--layout", layout, "--reference", ref}, &out, &errOut)
		return code, out.String() + errOut.String()
	}
	if code, out := check(layouts[0], refs[0]); code != 0 || strings.Count(out, "byte-equal") != 3 {
		t.Errorf("its own layout: exit %d:\n%s", code, out)
	}
	if code, out := check(layouts[0], refs[1]); code != 1 || !strings.Contains(out, "the registry's index differs") {
		t.Errorf("another layout: exit %d:\n%s", code, out)
	}
	other := "10.0.0.1:5000/kms@" + v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}.String()
	if code, out := check(layouts[0], other); code != 1 || !strings.Contains(out, "not a loopback registry") {
		t.Errorf("%s: exit %d:\n%s", other, code, out)
	}
}
