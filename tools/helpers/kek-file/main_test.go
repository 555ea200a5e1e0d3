package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/helpers/helpertest"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

func kekFile(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return testbin.Run(t, helpertest.KekFile(t), args...)
}

func kekGen(t *testing.T, args ...string) {
	t.Helper()
	if _, errOut, code := testbin.Run(t, helpertest.KekGen(t), args...); code != 0 {
		t.Fatalf("kek-gen %v: exit %d: %s", args, code, errOut)
	}
}

func TestHelp(t *testing.T) {
	out, _, code := kekFile(t, "--help")
	if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "--allow-insecure-permissions") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if _, errOut, code := kekFile(t); code != 2 || !strings.Contains(errOut, "exactly one FILE") {
		t.Fatalf("no FILE: exit %d, %q", code, errOut)
	}
}

// Files made by kek-gen come out byte for byte, and parse as the daemon
// would parse them.
func TestPrintsWhatKekGenWrote(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{{"--raw"}, {"--raw", "--size", "16"}, {}} {
		f := filepath.Join(dir, "kek")
		kekGen(t, append(args, "--force", f)...)
		if len(args) == 0 {
			kekGen(t, "--add", f)
		}
		want, _ := os.ReadFile(f)
		out, errOut, code := kekFile(t, f)
		if code != 0 || out != string(want) || errOut != "" {
			t.Fatalf("%v: exit %d, %d bytes out (want %d), stderr %q", args, code, len(out), len(want), errOut)
		}
		if _, err := kek.Parse([]byte(out)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRefusesLoosePermissions(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kek")
	kekGen(t, f)
	secret, _ := os.ReadFile(f)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o602} {
		os.Chmod(f, mode)
		out, errOut, code := kekFile(t, f)
		if code != 1 || out != "" || !strings.Contains(errOut, fmt.Sprintf("mode %04o", mode)) {
			t.Fatalf("mode %04o: exit %d, stdout %d bytes, stderr %q", mode, code, len(out), errOut)
		}
		if strings.Contains(errOut, string(secret[len(kek.Header):])) {
			t.Fatal("key material in the error")
		}
		if out, _, code := kekFile(t, "--allow-insecure-permissions", f); code != 0 || out != string(secret) {
			t.Fatalf("mode %04o with --allow-insecure-permissions: exit %d", mode, code)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		os.Chmod(f, mode)
		if out, errOut, code := kekFile(t, f); code != 0 || out != string(secret) {
			t.Fatalf("mode %04o: exit %d, %q", mode, code, errOut)
		}
	}
}

func TestRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{write("text", []byte("hello world\n")), "12 bytes"},
		{write("newline", append(bytes.Repeat([]byte{'k'}, 32), '\n')), "trailing newline"},
		{write("badline", []byte(kek.Header+"\nQUJD\n")), "line 2: key is 3 bytes"},
		{write("big", make([]byte, 70000)), "larger than"},
		{write("empty", nil), "0 bytes"},
		{filepath.Join(dir, "missing"), "no such file"},
		{dir, "not a regular file"},
		{fifo, "not a regular file"},
	} {
		out, errOut, code := kekFile(t, tc.path)
		if code != 1 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 1 and %q", filepath.Base(tc.path), code, out, errOut, tc.want)
		}
	}
}

// A Kubernetes Secret volume is a chain of symlinks; the mode checked is
// the file's, not the link's (always 0777).
func TestFollowsSymlinks(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "real")
	kekGen(t, f)
	os.Symlink("real", filepath.Join(dir, "link"))
	if _, errOut, code := kekFile(t, filepath.Join(dir, "link")); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}
