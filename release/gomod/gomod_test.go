package gomod

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	m, err := Parse([]byte(`module github.com/cmdkms/kms // the daemon

go 1.26.0

require (
	google.golang.org/grpc v1.82.1
	google.golang.org/grpc/examples v0.0.0-20260101000000-abcdef // a nested module
)

require golang.org/x/sys v0.47.0 // indirect
`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Main != "github.com/cmdkms/kms" || strings.Join(m.Modules(), " ") != "golang.org/x/sys google.golang.org/grpc google.golang.org/grpc/examples" {
		t.Errorf("parsed %+v", m)
	}
	for pkg, want := range map[string]string{
		"google.golang.org/grpc/codes":      "google.golang.org/grpc",
		"google.golang.org/grpc/examples/x": "google.golang.org/grpc/examples",
		"golang.org/x/sys":                  "golang.org/x/sys",
		"golang.org/x/system":               "",
	} {
		if got, _, _ := m.ModuleOf(pkg); got != want {
			t.Errorf("ModuleOf(%s) = %q, want %q", pkg, got, want)
		}
	}
	if !m.IsMain("github.com/cmdkms/kms/src/cli") || m.IsMain("github.com/cmdkms/kmsx") {
		t.Error("IsMain")
	}
	for _, bad := range []string{"go 1.26\n", "module a\nreplace b => ../b\n", "module a\nrequire (\n\tx\n)\n"} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestSums(t *testing.T) {
	s, err := Sums([]byte("a.org/m v1.0.0 h1:zip=\na.org/m v1.0.0/go.mod h1:mod=\nb.org/n v2.0.0/go.mod h1:only=\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1 || s["a.org/m@v1.0.0"] != "h1:zip=" {
		t.Errorf("sums %v", s)
	}
	if _, err := Sums([]byte("a.org/m v1.0.0\n")); err == nil {
		t.Error("a line without a hash was accepted")
	}
}
