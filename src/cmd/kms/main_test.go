package main

// These tests run the real kms binary (see src/testbin) against real
// unix sockets and real shell commands.

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

type daemon struct {
	*testbin.Proc
	v1 v1beta1.KeyManagementServiceClient
	v2 v2.KeyManagementServiceClient
}

// startDaemon runs kms on sock and connects both API clients.
func startDaemon(t *testing.T, sock string, args ...string) *daemon {
	t.Helper()
	d := testbin.StartKMS(t, sock, args...)
	return connect(t, d, sock)
}

func connect(t *testing.T, d *testbin.Proc, sock string) *daemon {
	t.Helper()
	conn := testbin.Dial(t, sock)
	t.Cleanup(func() { conn.Close() })
	return &daemon{d, v1beta1.NewKeyManagementServiceClient(conn), v2.NewKeyManagementServiceClient(conn)}
}

// runToExit runs kms expecting it to exit by itself.
func runToExit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, testbin.KMS(t), args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Run()
	return cmd.ProcessState.ExitCode(), out.String()
}

func keyStatus(t *testing.T, d *daemon) *v2.StatusResponse {
	t.Helper()
	st, err := d.v2.Status(context.Background(), &v2.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestFlags(t *testing.T) {
	code, out := runToExit(t, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, f := range []string{"--command", "--timeout", "--command-timeout", "--endpoint", "--socket-mode", "--mode", "--shutdown-timeout", "--log-format", "--log-level", "--version", "--allow-uid", "--allow-gid", "--audit-log"} {
		if !strings.Contains(out, f+" ") && !strings.Contains(out, f+"[") {
			t.Errorf("--help does not list %s", f)
		}
	}
	if code, out := runToExit(t, "--version"); code != 0 || !strings.HasPrefix(out, "kms ") || !regexp.MustCompile(`(?m)^fips140: \S+ (enabled|disabled)$`).MatchString(out) {
		t.Errorf("--version: %d %q", code, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--command is required"},
		{[]string{"--command", "true", "--timeout", "59s"}, "below the minimum of 1m0s"},
		{[]string{"--command", "true", "--command-timeout", "2h"}, "must be positive and below --timeout"},
		{[]string{"--command", "true", "--mode", "aes"}, `unknown mode "aes"`},
		{[]string{"--command", "true", "--socket-mode", "0999"}, "want octal permissions"},
		{[]string{"--command", "true", "--log-format", "xml"}, "want text or json"},
		{[]string{"--command", "true", "--log-level", "loud"}, "want debug, info"},
		{[]string{"--command", "true", "check"}, `unexpected argument "check"`},
		{[]string{"--command", "true", "--allow-uid", "root"}, `--allow-uid: "root" is not a numeric id`},
		{[]string{"--command", "true", "--allow-gid", "0,-1"}, `--allow-gid: "-1" is not a numeric id`},
		{[]string{"--comand", "true"}, "unknown flag: --comand"},
	} {
		code, out := runToExit(t, tc.args...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%q: exit %d, %q; want 2 and %q", tc.args, code, out, tc.want)
		}
	}
}

func TestStartFailures(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock := filepath.Join(dir, "kms.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--command", "echo 'tang unreachable' >&2; exit 1", "--endpoint", "unix://" + sock}, "tang unreachable"},
		{[]string{"--command", "echo short", "--endpoint", "unix://" + sock}, "KEK output is 6 bytes"},
		{[]string{"--command", "true", "--endpoint", "unix://" + dir + "/missing/kms.sock"}, "does not exist"},
		{[]string{"--command", "true"}, "LISTEN_FDS is not set"},
		{[]string{"--command", "exit 1", "--log-format", "json", "--endpoint", "unix://" + sock}, `"level":"ERROR","msg":"kms stopped"`},
		{[]string{"--command", "true", "--endpoint", "unix://" + sock, "--audit-log", dir + "/missing/audit.log"}, "audit log: open"},
	} {
		code, out := runToExit(t, tc.args...)
		if code != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("%q: exit %d, %q; want 1 and %q", tc.args, code, out, tc.want)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("%q left the socket behind", tc.args)
		}
	}
}

// The whole life of a daemon: serve both APIs, rotate on SIGHUP, survive
// bad input, stop on SIGTERM, and after a restart read what it wrote.
func TestDaemonLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	a, b := testbin.NewKey(), testbin.NewKey()
	testbin.WriteKeyring(t, ring, a)
	args := []string{"--command", "cat " + ring, "--log-level", "debug"}
	d := startDaemon(t, sock, args...)

	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket: %v %v", fi.Mode(), err)
	}
	if v, err := d.v1.Version(ctx, &v1beta1.VersionRequest{Version: "v1beta1"}); err != nil || v.Version != "v1beta1" {
		t.Fatalf("v1 Version: %v", err)
	}
	stA := keyStatus(t, d)
	seed := []byte("0123456789abcdef0123456789abcdef")
	encA, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: seed})
	if err != nil || encA.KeyId != stA.KeyId {
		t.Fatalf("v2 Encrypt: %v", err)
	}
	v1A, err := d.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: seed})
	if err != nil {
		t.Fatal(err)
	}

	// Garbage does not hurt it.
	_, err = d.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: []byte("\x00garbage"), KeyId: stA.KeyId})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("garbage: %v", err)
	}

	// Rotation through the keyring: b primary, a kept.
	testbin.WriteKeyring(t, ring, b, a)
	d.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(20 * time.Second)
	for keyStatus(t, d).KeyId == stA.KeyId {
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not rotate:\n%s", d.Stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stB := keyStatus(t, d)
	encB, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: seed})
	if err != nil || encB.KeyId != stB.KeyId {
		t.Fatalf("Encrypt after rotation: %v", err)
	}

	// SIGTERM with a client still connected: exit 0, socket gone.
	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Stderr())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatal("socket left after SIGTERM")
	}
	logs := d.Stderr()
	for _, k := range [][]byte{a, b} {
		if strings.Contains(logs, base64.StdEncoding.EncodeToString(k)) {
			t.Fatal("key material in the log")
		}
	}
	for _, want := range []string{"KEK loaded", "primary KEK changed", "shutting down"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}

	// A new process: same key ids, everything written before decrypts.
	d2 := startDaemon(t, sock, args...)
	if st := keyStatus(t, d2); st.KeyId != stB.KeyId {
		t.Fatalf("key_id changed across restart: %s -> %s", stB.KeyId, st.KeyId)
	}
	for _, enc := range []*v2.EncryptResponse{encA, encB} {
		dec, err := d2.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
		if err != nil || !bytes.Equal(dec.Plaintext, seed) {
			t.Fatalf("after restart, %s: %v", enc.KeyId, err)
		}
	}
	dec, err := d2.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: v1A.Cipher})
	if err != nil || !bytes.Equal(dec.Plain, seed) {
		t.Fatalf("v1 after restart: %v", err)
	}
	if code := d2.Stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("SIGINT: exit %d", code)
	}
}

// The 2018 setup: a raw key on stdout and ciphertexts without a header.
func TestRawKEKReadsLegacyCiphertexts(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, raw := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "kek.bin")
	key := testbin.NewKey()
	os.WriteFile(raw, key, 0o600)
	d := startDaemon(t, sock, "--command", "cat "+raw, "--mode", "aescbc")

	block, _ := aes.NewCipher(key)
	iv := make([]byte, 16)
	rand.Read(iv)
	body := append([]byte("a DEK written by the 2018 daemon"), bytes.Repeat([]byte{16}, 16)...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(body, body)
	legacy := append(append([]byte(":ck:aescbc:v1:"), iv...), body...)
	dec, err := d.v1.Decrypt(context.Background(), &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: legacy})
	if err != nil || string(dec.Plain) != "a DEK written by the 2018 daemon" {
		t.Fatalf("legacy: %v", err)
	}
	enc, _ := d.v1.Encrypt(context.Background(), &v1beta1.EncryptRequest{Version: "v1beta1", Plain: []byte("x")})
	if !bytes.HasPrefix(enc.Cipher, []byte(":ck:v2:aescbc:")) {
		t.Fatalf("--mode aescbc wrote %q", enc.Cipher[:14])
	}
}

func TestSocketRules(t *testing.T) {
	dir := testbin.ShortDir(t)
	ring := filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())

	// A stale socket (its owner died) is replaced.
	sock := filepath.Join(dir, "kms.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	d := startDaemon(t, sock, "--command", "cat "+ring, "--socket-mode", "0660")
	if fi, _ := os.Stat(sock); fi.Mode().Perm() != 0o660 {
		t.Fatalf("--socket-mode 0660 gave %v", fi.Mode().Perm())
	}

	// A live one is not.
	code, out := runToExit(t, "--command", "cat "+ring, "--endpoint", "unix://"+sock)
	if code != 1 || !strings.Contains(out, "another process is listening") {
		t.Fatalf("second daemon: exit %d %q", code, out)
	}
	keyStatus(t, d) // the first still serves
}

// startActivated starts kms as systemd socket activation does, on a socket
// it makes at sock: fd 3, LISTEN_FDS=1, LISTEN_PID = the daemon.
func startActivated(t *testing.T, sock string, args ...string) *daemon {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, _ := l.File()
	l.Close()
	defer f.Close()
	// The shell's pid survives exec, so LISTEN_PID can name the daemon.
	cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, testbin.KMS(t)}, args...)...)
	cmd.ExtraFiles = []*os.File{f}
	return connect(t, testbin.Start(t, cmd, testbin.Ready), sock)
}

func TestSystemdActivation(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := startActivated(t, sock, "--command", "cat "+ring)
	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Stderr())
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatal("kms removed systemd's socket")
	}
}

// kms removes only the socket it made: not a file an operator put at its
// path, nor the socket of a daemon that started there after it.
func TestSocketOwnership(t *testing.T) {
	dir := testbin.ShortDir(t)
	ring := filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	sock := filepath.Join(dir, "kms.sock")

	d := startDaemon(t, sock, "--command", "cat "+ring)
	keep := filepath.Join(dir, "precious")
	os.WriteFile(keep, []byte("an operator's file"), 0o600)
	if err := os.Rename(keep, sock); err != nil {
		t.Fatal(err)
	}
	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if b, err := os.ReadFile(sock); err != nil || string(b) != "an operator's file" {
		t.Fatalf("the file put at the socket's path is gone: %v", err)
	}
	if !strings.Contains(d.Stderr(), "holds another file now") {
		t.Errorf("log:\n%s", d.Stderr())
	}
	os.Remove(sock)

	first := startDaemon(t, sock, "--command", "cat "+ring)
	os.Remove(sock) // e.g. a second daemon's start-up script cleared the path
	second := startDaemon(t, sock, "--command", "cat "+ring)
	if code := first.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatal("stopping the first daemon removed the second one's socket")
	}
	keyStatus(t, connect(t, second.Proc, sock))
}

func TestSocketPermissionsAndPlaces(t *testing.T) {
	dir := testbin.ShortDir(t)
	ring := filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	for mode, want := range map[string]string{
		"0666": "gives other users access", "0777": "gives other users access", "0602": "gives other users access",
		"0400": "the owner needs read and write", "0700": "the owner needs read and write",
		"0640": "a group needs read and write", "1600": "only permission bits",
	} {
		code, out := runToExit(t, "--command", "cat "+ring, "--socket-mode", mode, "--endpoint", "unix://"+dir+"/m.sock")
		if code != 2 || !strings.Contains(out, want) {
			t.Errorf("--socket-mode %s: exit %d, %q; want 2 and %q", mode, code, out, want)
		}
	}

	// A directory anyone may write to, as /tmp: the path could be squatted.
	shared := filepath.Join(dir, "shared")
	os.Mkdir(shared, 0o777)
	os.Chmod(shared, 0o1777)
	d := startDaemon(t, filepath.Join(shared, "kms.sock"), "--command", "cat "+ring, "--health-address", "0.0.0.0:0")
	for _, want := range []string{"the socket's directory can be written by other users", "--health-address is not a loopback address"} {
		if !strings.Contains(d.Stderr(), want) {
			t.Errorf("no warning %q:\n%s", want, d.Stderr())
		}
	}
	private := startDaemon(t, filepath.Join(dir, "kms.sock"), "--command", "cat "+ring, "--health-address", "127.0.0.1:0")
	if strings.Contains(private.Stderr(), "level=WARN") {
		t.Errorf("warnings for a private directory and a loopback address:\n%s", private.Stderr())
	}
}
