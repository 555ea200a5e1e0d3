package socket

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmdkms/kms/src/testbin"
)

func TestListen(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	dir := testbin.ShortDir(t)

	for _, mode := range []os.FileMode{0o600, 0o660} {
		sock := filepath.Join(dir, "m.sock")
		l, err := Listen("unix://"+sock, mode, log)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(sock)
		if fi.Mode().Perm() != mode {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), mode)
		}
		l.Close()
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Error("socket not removed on close")
		}
	}

	// Live listener: refuse, and leave it alone.
	live := filepath.Join(dir, "live.sock")
	l, err := Listen("unix://"+live, 0o600, log)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Listen("unix://"+live, 0o600, log); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("live socket: %v", err)
	}
	if c, err := net.Dial("unix", live); err != nil {
		t.Fatalf("live socket was disturbed: %v", err)
	} else {
		c.Close()
	}

	// Stale socket: a file nobody listens on.
	stale := filepath.Join(dir, "stale.sock")
	ul, _ := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	ul.SetUnlinkOnClose(false)
	ul.Close()
	l2, err := Listen("unix://"+stale, 0o600, log)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	l2.Close()

	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, []byte("precious"), 0o600)
	for endpoint, want := range map[string]string{
		"unix://" + regular:                          "not a socket",
		"unix://" + filepath.Join(dir, "no/k.sock"):  "does not exist",
		"unix://relative.sock":                       "want unix:///absolute/path",
		"/run/kms.sock":                              "want unix:///absolute/path",
		"unix:///" + strings.Repeat("x", 120) + ".s": "at most 107",
	} {
		if _, err := Listen(endpoint, 0o600, log); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", endpoint, err, want)
		}
	}
	if b, _ := os.ReadFile(regular); string(b) != "precious" {
		t.Error("a regular file was replaced")
	}
}

func TestSystemdErrors(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Setenv("LISTEN_FDS", "")
	if _, err := Listen("", 0o600, log); err == nil || !strings.Contains(err.Error(), "LISTEN_FDS is not set") {
		t.Fatal(err)
	}
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", "1")
	if _, err := Listen("", 0o600, log); err == nil || !strings.Contains(err.Error(), "is not this process") {
		t.Fatal(err)
	}
}
