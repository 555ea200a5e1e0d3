package packages

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testPackage(version string, epoch int64) Package {
	return Package{
		Version: version,
		Arch:    "amd64",
		Time:    time.Unix(epoch, 0),
		Files: []File{
			{Path: "/usr/bin/kms", Mode: 0o755, Data: []byte("#!/bin/sh\necho kms " + version + "\n")},
			{Path: "/usr/lib/systemd/system/kms.socket", Mode: 0o644, Data: []byte("[Socket]\n")},
			{Path: "/usr/share/doc/kms/README.md", Mode: 0o644, Data: []byte("# kms\n")},
		},
	}
}

func TestPackageVersion(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":               "1.2.3",
		"v1.2.3-4-gabcdef0":    "1.2.3+4+gabcdef0",
		"v1.2.3-dirty":         "1.2.3+dirty",
		"devel":                "0~devel",
		"4991a1e":              "0~4991a1e",
		"4991a1e-dirty":        "0~4991a1e+dirty",
		"1234567":              "0~1234567",
		"1.0.0":                "1.0.0",
		"v2.0.0-rc.1-3-g12345": "2.0.0+rc.1+3+g12345",
	} {
		if got := PackageVersion(in); got != want {
			t.Errorf("PackageVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

// Equal inputs give equal bytes; the time is part of the input.
func TestReproducible(t *testing.T) {
	for name, build := range map[string]func(Package) ([]byte, error){"deb": Package.Deb, "rpm": Package.RPM} {
		a, err := build(testPackage("v1.0.0", 1700000000))
		if err != nil {
			t.Fatal(err)
		}
		b, err := build(testPackage("v1.0.0", 1700000000))
		if err != nil {
			t.Fatal(err)
		}
		c, err := build(testPackage("v1.0.0", 1700000001))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s: two builds of the same input differ", name)
		}
		if bytes.Equal(a, c) {
			t.Errorf("%s: a different SOURCE_DATE_EPOCH gave the same bytes", name)
		}
	}
}

func TestRefusesKeyringDir(t *testing.T) {
	for _, p := range []string{"/etc/kms", "/etc/kms/kek", "/etc/kms/sub/x"} {
		pkg := testPackage("v1.0.0", 0)
		pkg.Files = append(pkg.Files, File{Path: p, Mode: 0o600, Data: []byte("x")})
		if _, err := pkg.Deb(); err == nil || !strings.Contains(err.Error(), "keyring") {
			t.Errorf("Deb with %s: err = %v, want a refusal naming the keyring directory", p, err)
		}
		if _, err := pkg.RPM(); err == nil {
			t.Errorf("RPM with %s: no error", p)
		}
	}
}

// dpkg-deb and rpm read what was written: fields, files with modes and owners.
func TestToolsReadThem(t *testing.T) {
	dir := t.TempDir()
	pkg := testPackage("v1.2.3", 1700000000)
	deb, err := pkg.Deb()
	if err != nil {
		t.Fatal(err)
	}
	rpm, err := pkg.RPM()
	if err != nil {
		t.Fatal(err)
	}
	debPath, rpmPath := filepath.Join(dir, pkg.DebName()), filepath.Join(dir, pkg.RPMName())
	if pkg.DebName() != "kms_1.2.3_amd64.deb" || pkg.RPMName() != "kms-1.2.3-1.x86_64.rpm" {
		t.Errorf("names %s %s", pkg.DebName(), pkg.RPMName())
	}
	for p, b := range map[string][]byte{debPath: deb, rpmPath: rpm} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		tool string
		args []string
		want []string
	}{
		{"dpkg-deb", []string{"-f", debPath, "Package", "Version", "Architecture"}, []string{"Package: kms", "Version: 1.2.3", "Architecture: amd64"}},
		{"dpkg-deb", []string{"-c", debPath}, []string{
			"-rwxr-xr-x root/root        26 2023-11-14 22:13 ./usr/bin/kms",
			"./usr/share/doc/kms/copyright", "./usr/share/doc/kms/changelog.gz", "./usr/share/lintian/overrides/kms",
		}},
		{"rpm", []string{"-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}\n", rpmPath}, []string{"kms 1.2.3 1 x86_64"}},
		{"rpm", []string{"-qlvp", rpmPath}, []string{"-rwxr-xr-x    1 root     root                       26 Nov 14  2023 /usr/bin/kms"}},
		{"rpm", []string{"-K", rpmPath}, []string{"digests OK"}},
	} {
		if _, err := exec.LookPath(c.tool); err != nil {
			t.Logf("%s not installed (apt-get install dpkg rpm): not checked", c.tool)
			continue
		}
		cmd := exec.Command(c.tool, c.args...)
		cmd.Env = append(os.Environ(), "TZ=UTC") // the listings' dates
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s %v: %v\n%s", c.tool, c.args, err, out)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s %v: no %q in:\n%s", c.tool, c.args, w, out)
			}
		}
	}
}
