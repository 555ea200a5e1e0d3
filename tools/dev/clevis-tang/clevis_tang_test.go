// Package clevistang is the Clevis/Tang example of README "Key-command
// helpers", as a test that runs it: Debian's tang server on loopback, a
// keyring from kek-gen bound to it with `clevis encrypt tang`, and the kms
// daemon running `clevis decrypt`, through a tang outage and back.
package clevistang

import (
	"bytes"
	"context"
	"encoding/base64"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/helpers/helpertest"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

const (
	tangd       = "/usr/libexec/tangd"
	tangdKeygen = "/usr/libexec/tangd-keygen"
)

// needTools skips the test when Debian's tang or clevis is missing; CI
// installs both (.ci/run), so there the test always runs.
func needTools(t *testing.T) {
	for _, p := range []string{tangd, tangdKeygen} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("tang is not installed (%s missing): apt-get install tang clevis", p)
		}
	}
	for _, p := range []string{"clevis", "clevis-encrypt-tang", "clevis-decrypt-tang"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("clevis is not installed (%s missing): apt-get install tang clevis", p)
		}
	}
}

// tang serves Debian's tangd on a loopback port the way inetd (or systemd's
// Accept=yes socket) does: one tangd process per connection, the
// connection on its stdin and stdout. It can be stopped and started again
// on the same port, to stage an outage.
type tang struct {
	t    *testing.T
	db   string
	addr string
	mu   sync.Mutex
	l    net.Listener
	wg   sync.WaitGroup
}

func startTang(t *testing.T, db string) *tang {
	tg := &tang{t: t, db: db, addr: "127.0.0.1:0"}
	tg.start()
	tg.addr = tg.l.Addr().String()
	t.Cleanup(tg.stop)
	return tg
}

func (tg *tang) start() {
	tg.t.Helper()
	l, err := net.Listen("tcp", tg.addr)
	if err != nil {
		tg.t.Fatal(err)
	}
	tg.mu.Lock()
	tg.l = l
	tg.mu.Unlock()
	tg.wg.Add(1)
	go func() {
		defer tg.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tg.wg.Add(1)
			go func() {
				defer tg.wg.Done()
				tg.serve(c.(*net.TCPConn))
			}()
		}
	}()
}

func (tg *tang) serve(c *net.TCPConn) {
	defer c.Close()
	f, err := c.File()
	if err != nil {
		return
	}
	defer f.Close()
	cmd := exec.Command(tangd, tg.db)
	cmd.Stdin, cmd.Stdout = f, f
	cmd.Run()
}

// stop closes the port and waits for requests in flight.
func (tg *tang) stop() {
	tg.mu.Lock()
	l := tg.l
	tg.l = nil
	tg.mu.Unlock()
	if l != nil {
		l.Close()
		tg.wg.Wait()
	}
}

func run(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, errOut.String())
	}
	return out.Bytes()
}

func TestClevisTangOutageAndRecovery(t *testing.T) {
	needTools(t)
	kms := testbin.KMS(t)
	kekGen := helpertest.KekGen(t)
	dir := testbin.ShortDir(t)

	db := filepath.Join(dir, "tang-db")
	if err := os.Mkdir(db, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, nil, tangdKeygen, db)
	tg := startTang(t, db)

	// A keyring made by kek-gen, bound to tang; the plain copy is deleted,
	// as an operator would.
	plain, jwe := filepath.Join(dir, "keyring"), filepath.Join(dir, "kek.jwe")
	run(t, nil, kekGen, plain)
	ring, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := kek.Parse(ring)
	if err != nil {
		t.Fatal(err)
	}
	wantID := parsed.Keys[0].ID.String()
	// -y trusts the advertisement without asking: nobody is at a terminal.
	sealed := run(t, ring, "clevis", "encrypt", "tang", `{"url":"http://`+tg.addr+`"}`, "-y")
	if bytes.Contains(sealed, ring) {
		t.Fatal("the JWE contains the keyring in clear")
	}
	if err := os.WriteFile(jwe, sealed, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(plain)
	command := "clevis decrypt < " + jwe

	// kms check sees the same keyring through clevis.
	out := run(t, nil, kms, "check", "--command", command)
	if !strings.Contains(string(out), wantID+"  32 bytes  primary") {
		t.Fatalf("kms check:\n%s", out)
	}
	t.Logf("kms check: %s", out)

	// Short timeouts, yet room for clevis: its shell scripts and EC math take
	// seconds per run on a busy machine.
	const timeout = 30 * time.Second
	sock := filepath.Join(dir, "kms.sock")
	d := testbin.StartKMS(t, sock, "--command", command,
		"--min-timeout", "1s", "--timeout", timeout.String(), "--command-timeout", "20s")
	conn := testbin.Dial(t, sock)
	defer conn.Close()
	client := v2.NewKeyManagementServiceClient(conn)
	ctx := context.Background()

	roundTrip := func(what string) []byte {
		t.Helper()
		enc, err := client.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("a DEK seed " + what), Uid: what})
		if err != nil {
			t.Fatalf("%s: Encrypt: %v", what, err)
		}
		if enc.KeyId != wantID {
			t.Fatalf("%s: key_id %s, want the keyring's %s", what, enc.KeyId, wantID)
		}
		dec, err := client.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: what})
		if err != nil || string(dec.Plaintext) != "a DEK seed "+what {
			t.Fatalf("%s: Decrypt: %q, %v", what, dec.GetPlaintext(), err)
		}
		return enc.Ciphertext
	}
	before := roundTrip("tang up")

	// Tang goes away. A refresh now fails, and the cached KEK keeps serving.
	tg.stop()
	down := time.Now()
	d.Signal(syscall.SIGHUP)
	d.WaitLog(t, "KEK refresh failed; serving the cached KEK", timeout)
	roundTrip("tang down, cached")

	// Then, after the timeout, the KEK is purged and requests fail.
	d.WaitLog(t, "KEK purged", 3*timeout)
	if since := time.Since(down); since > 3*timeout {
		t.Fatalf("purged %v after tang went down", since)
	}
	if _, err := client.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("x"), Uid: "purged"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Encrypt while purged: %v, want Unavailable", err)
	}
	if _, err := client.Status(ctx, &v2.StatusRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Status while purged: %v, want Unavailable", err)
	}

	// Tang is back: the retrying daemon recovers on its own, and data
	// written before the outage still decrypts.
	tg.start()
	d.WaitLog(t, "KEK restored", timeout)
	st, err := client.Status(ctx, &v2.StatusRequest{})
	if err != nil || st.KeyId != wantID || st.Healthz != "ok" {
		t.Fatalf("Status after recovery: %v, %v", st, err)
	}
	dec, err := client.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: before, KeyId: wantID, Uid: "old"})
	if err != nil || string(dec.Plaintext) != "a DEK seed tang up" {
		t.Fatalf("old ciphertext after recovery: %v", err)
	}
	roundTrip("tang back")

	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Stderr())
	}
	for _, k := range parsed.Keys {
		if strings.Contains(d.Stderr(), base64.StdEncoding.EncodeToString(k.Secret)) {
			t.Fatal("key material in the daemon's log")
		}
	}
	parsed.Wipe()
	t.Logf("daemon log:\n%s", d.Stderr())
}
