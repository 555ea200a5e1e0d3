package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cmdkms/kms/src/kek"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func TestBinaryFromRunfiles(t *testing.T) {
	root := t.TempDir()
	rel := "_main/src/cmd/kms/kms_/kms"
	os.MkdirAll(filepath.Join(root, filepath.Dir(rel)), 0o755)
	os.WriteFile(filepath.Join(root, rel), []byte("#!/bin/true\n"), 0o755)

	t.Setenv("RUNFILES_DIR", root)
	t.Setenv("KMS_BINARY", rel)
	if got := KMS(t); got != filepath.Join(root, rel) {
		t.Fatalf("got %q", got)
	}
	if _, err := resolve("_main/missing"); err == nil {
		t.Fatal("a missing binary was accepted")
	}
	t.Setenv("KMS_BINARY", "/abs/kms")
	if got := KMS(t); got != "/abs/kms" {
		t.Fatalf("absolute: %q", got)
	}
}

func TestWriteKeyringParses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	a, b := NewKey(), NewKey()
	WriteKeyring(t, path, a, b)
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := kek.Parse(text)
	if err != nil || len(r.Keys) != 2 || string(r.Keys[0].Secret) != string(a) || string(r.Keys[1].Secret) != string(b) {
		t.Fatalf("%v %v", r, err)
	}
}

func TestStartAndStop(t *testing.T) {
	p := Start(t, exec.Command("/bin/sh", "-c", "echo up >&2; exec sleep 60"), "up")
	if code := p.Stop(t, syscall.SIGTERM); code != -1 || !strings.Contains(p.Stderr(), "up") {
		t.Fatalf("exit %d, stderr %q", code, p.Stderr())
	}
	out, errOut, code := Run(t, "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
	if out != "out\n" || errOut != "err\n" || code != 3 {
		t.Fatalf("%q %q %d", out, errOut, code)
	}
}
