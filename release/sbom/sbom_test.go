package sbom

import (
	"bytes"
	"encoding/json"
	"os"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	spdxjson "github.com/spdx/tools-golang/json"
)

// The test binary itself carries Go build info, like the release binaries.
func testImage(t *testing.T) Image {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	return Image{
		Name: "kms", Version: "v1.2.3", Licenses: "Apache-2.0", Created: time.Unix(1795714769, 0),
		Binaries: []Binary{{Path: "/usr/bin/kms", Data: b}},
		Debs:     []DebPackage{{Name: "tzdata", Version: "2026b-0+deb12u1", Architecture: "all", SHA256: strings.Repeat("ab", 32)}},
	}
}

func TestDeterministicAndValid(t *testing.T) {
	var a, b bytes.Buffer
	if err := Write(&a, testImage(t)); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, testImage(t)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two SBOMs of the same image differ")
	}
	doc, err := spdxjson.Read(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatalf("not readable as SPDX: %v", err)
	}
	if doc.SPDXVersion != "SPDX-2.3" || doc.CreationInfo.Created != "2026-11-26T17:39:29Z" ||
		!strings.HasPrefix(doc.DocumentNamespace, "https://") {
		t.Errorf("document: %s %s %s", doc.SPDXVersion, doc.CreationInfo.Created, doc.DocumentNamespace)
	}
	var raw struct {
		Packages []struct {
			Name         string `json:"name"`
			ExternalRefs []struct {
				Locator string `json:"referenceLocator"`
			} `json:"externalRefs"`
		} `json:"packages"`
	}
	json.Unmarshal(a.Bytes(), &raw)
	purls := map[string]bool{}
	for _, p := range raw.Packages {
		for _, r := range p.ExternalRefs {
			purls[r.Locator] = true
		}
	}
	for _, want := range []string{
		"pkg:deb/debian/tzdata@2026b-0+deb12u1?arch=all",
		"pkg:golang/github.com/cmdkms/kms@v1.2.3",
	} {
		if !purls[want] {
			t.Errorf("no package %s in %v", want, purls)
		}
	}
	stdlib := false
	for p := range purls {
		stdlib = stdlib || strings.HasPrefix(p, "pkg:golang/stdlib@1.")
	}
	if !stdlib {
		t.Error("no stdlib package")
	}
}

func TestRefusesNonGo(t *testing.T) {
	img := testImage(t)
	img.Binaries[0].Data = []byte("not a binary")
	if err := Write(&bytes.Buffer{}, img); err == nil {
		t.Error("wrote an SBOM for a binary without build info")
	}
}

// Test binaries embed no module list, so the dependency part is checked with
// build info as a release binary carries it.
func TestModules(t *testing.T) {
	img := testImage(t)
	img.Binaries = append(img.Binaries, Binary{Path: "/usr/bin/kek-file", Data: []byte("x")})
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8", Path: "github.com/cmdkms/kms/src/cmd/kms",
		Main: debug.Module{Path: "github.com/cmdkms/kms", Version: "(devel)"},
		Deps: []*debug.Module{
			{Path: "google.golang.org/grpc", Version: "v1.82.1"},
			{Path: "example.org/old", Version: "v1.0.0", Replace: &debug.Module{Path: "example.org/fork", Version: "v1.0.1"}},
		},
	}
	doc, err := document(img, img.Binaries, []*debug.BuildInfo{bi, bi})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, p := range doc.Packages {
		for _, r := range p.PackageExternalReferences {
			count[r.Locator]++
		}
	}
	for _, want := range []string{
		"pkg:golang/google.golang.org/grpc@v1.82.1", "pkg:golang/example.org/fork@v1.0.1", "pkg:golang/stdlib@1.26.8",
	} {
		if count[want] != 1 {
			t.Errorf("%s listed %d times, want once (shared by both binaries): %v", want, count[want], count)
		}
	}
	if count["pkg:golang/example.org/old@v1.0.0"] != 0 {
		t.Error("replaced module listed")
	}
	deps := 0
	for _, r := range doc.Relationships {
		if r.Relationship == "DEPENDS_ON" {
			deps++
		}
	}
	if deps != 6 {
		t.Errorf("%d DEPENDS_ON relationships, want 3 per binary", deps)
	}
}
