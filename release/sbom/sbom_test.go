package sbom

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	spdxjson "github.com/spdx/tools-golang/json"
)

const testGoMod = `module github.com/cmdkms/kms

go 1.26.0

require (
	google.golang.org/grpc v1.82.1
	google.golang.org/grpc/examples v0.0.0-20260101000000-abcdef // a nested module
	github.com/spf13/pflag v1.1.0
)

require golang.org/x/sys v0.47.0 // indirect
`

// The test binary carries Go build info (the Go version) like a release
// binary built by rules_go.
func testImage(t *testing.T) Image {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	pkgs := []string{
		"github.com/cmdkms/kms/src/server",
		"google.golang.org/grpc",
		"google.golang.org/grpc/codes",
		"github.com/spf13/pflag",
		"golang.org/x/sys/unix",
		"example.org/outside/gomod",
	}
	return Image{
		Name: "kms", Version: "v1.2.3", Licenses: "Apache-2.0", Created: time.Unix(1795714769, 0),
		Binaries: []Binary{
			{Arch: "amd64", Path: "/usr/bin/kms", Data: b, Packages: pkgs},
			{Arch: "amd64", Path: "/usr/bin/kek-file", Data: append(b, 0), Packages: []string{"google.golang.org/grpc/examples/x"}},
			{Arch: "arm64", Path: "/usr/bin/kms", Data: append(b, 1), Packages: pkgs},
		},
		Debs:  []DebPackage{{Name: "tzdata", Version: "2026b-0+deb12u1", Architecture: "all", SHA256: strings.Repeat("ab", 32)}},
		GoMod: []byte(testGoMod),
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
		!strings.HasPrefix(doc.DocumentNamespace, "https://github.com/cmdkms/kms/spdx/kms-v1.2.3-") {
		t.Errorf("document: %s %s %s", doc.SPDXVersion, doc.CreationInfo.Created, doc.DocumentNamespace)
	}
	count := map[string]int{}
	for _, p := range doc.Packages {
		for _, r := range p.PackageExternalReferences {
			count[r.Locator]++
		}
	}
	for _, want := range []string{
		"pkg:deb/debian/tzdata@2026b-0+deb12u1?arch=all",
		"pkg:golang/github.com/cmdkms/kms@v1.2.3", // each binary
		"pkg:golang/google.golang.org/grpc@v1.82.1",
		"pkg:golang/github.com/spf13/pflag@v1.1.0",
		"pkg:golang/golang.org/x/sys@v0.47.0",
		"pkg:golang/google.golang.org/grpc/examples@v0.0.0-20260101000000-abcdef",
	} {
		if count[want] == 0 {
			t.Errorf("no package %s in %v", want, count)
		}
	}
	stdlib := 0
	for p, n := range count {
		if strings.HasPrefix(p, "pkg:golang/stdlib@1.") {
			stdlib += n
		}
		if strings.HasPrefix(p, "pkg:golang/") && !strings.Contains(p, "cmdkms") && n != 1 {
			t.Errorf("%s listed %d times, want once", p, n)
		}
	}
	if stdlib != 1 {
		t.Errorf("%d stdlib packages, want 1 shared by both binaries", stdlib)
	}
	deps := 0
	for _, r := range doc.Relationships {
		if r.Relationship == "DEPENDS_ON" {
			deps++
		}
	}
	// kms (each architecture): stdlib, grpc, pflag, x/sys, the package
	// outside go.mod; kek-file: stdlib, grpc/examples.
	if deps != 12 {
		t.Errorf("%d DEPENDS_ON relationships, want 12", deps)
	}
	kms := map[string]string{}
	for _, p := range doc.Packages {
		if p.PackageName == "kms" && p.PrimaryPackagePurpose == "APPLICATION" {
			kms[p.PackageComment] = p.PackageChecksums[0].Value
		}
	}
	amd, arm := kms["Go binary of module github.com/cmdkms/kms, in the linux/amd64 image"], kms["Go binary of module github.com/cmdkms/kms, in the linux/arm64 image"]
	if len(kms) != 2 || amd == "" || arm == "" || amd == arm {
		t.Errorf("kms binaries by platform: %v", kms)
	}
	outside := false
	for _, p := range doc.Packages {
		if p.PackageName == "example.org/outside/gomod" {
			outside = p.PackageVersion == "NOASSERTION" && len(p.PackageExternalReferences) == 0
		}
	}
	if !outside {
		t.Error("a package from outside go.mod is not listed with version NOASSERTION")
	}
}

func TestRefusals(t *testing.T) {
	for name, mod := range map[string]func(*Image){
		"not a Go binary":    func(img *Image) { img.Binaries[0].Data = []byte("not a binary") },
		"replace directive":  func(img *Image) { img.GoMod = append(img.GoMod, "replace a => ../a\n"...) },
		"go.mod w/o module":  func(img *Image) { img.GoMod = []byte("go 1.26\n") },
		"no binaries at all": func(img *Image) { img.Binaries = nil },
		"no architecture":    func(img *Image) { img.Binaries[0].Arch = "" },
	} {
		img := testImage(t)
		mod(&img)
		if err := Write(&bytes.Buffer{}, img); err == nil {
			t.Errorf("%s: wrote an SBOM anyway", name)
		}
	}
}
