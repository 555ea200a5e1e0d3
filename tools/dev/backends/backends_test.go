// Package backends runs the KEK recipes of docs/backends end to end: a real
// kms daemon runs the KEK command of the recipe's systemd drop-in
// (release/deploy/systemd/backends) against Debian's real tools (Clevis with
// Tang servers and a software TPM, SoftHSM2 through OpenSC's pkcs11-tool),
// and each recipe's key source fails and comes back: the cache serves, the
// keys are purged at --timeout, service resumes by itself. Each recipe also
// rotates its keyring the way its page says, and docs/backends/tpm2.md's
// shell blocks run as written on two nodes (page_test.go).
//
// The tools are not installed here: .ci/run and tools/bazel's chroot do
// that. Where one is missing a test skips, naming the package to install.
package backends

import (
	"bytes"
	"context"
	"encoding/base64"
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

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/helpers/helpertest"
)

func TestMain(m *testing.M) {
	// The pages' blocks call systemctl: see fakeSystemctl.
	if filepath.Base(os.Args[0]) == "systemctl" {
		os.Exit(fakeSystemctl(os.Args[1:]))
	}
	os.Exit(testbin.Main(m))
}

// dropins is where the recipes' systemd drop-ins live, from this package's
// directory (in the source tree and in Bazel's runfiles alike).
const dropins = "../../../release/deploy/systemd/backends"

// need skips the test when a tool is missing, naming the Debian packages
// that bring it. An absolute tool is a path, any other is looked up in PATH.
func need(t *testing.T, packages string, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		var err error
		if filepath.IsAbs(tool) {
			_, err = os.Stat(tool)
		} else {
			_, err = exec.LookPath(tool)
		}
		if err != nil {
			t.Skipf("%s is not installed: apt-get install %s", tool, packages)
		}
	}
}

// run runs a tool to its end, with env added to the test's environment and
// stdin as its input, and returns its stdout. A failure fails the test.
func run(t *testing.T, env []string, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	out, errOut, err := try(env, stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errOut)
	}
	return out
}

// fails runs a tool that must fail and returns its stderr.
func fails(t *testing.T, env []string, stdin []byte, name string, args ...string) string {
	t.Helper()
	_, errOut, err := try(env, stdin, name, args...)
	if err == nil {
		t.Fatalf("%s %s succeeded; want a failure", name, strings.Join(args, " "))
	}
	return errOut
}

func try(env []string, stdin []byte, name string, args ...string) ([]byte, string, error) {
	var out, errOut bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &out, &errOut
	err := cmd.Run()
	return out.Bytes(), errOut.String(), err
}

// writeFile writes a file only its owner may read, as the recipes' files are.
func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// newKeyring makes a keyring with kek-gen, as an operator does, and returns
// its text and its primary key_id. The plain file is deleted: the recipes
// keep only the sealed copy.
func newKeyring(t *testing.T) (ring []byte, primary string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "kek")
	run(t, nil, nil, helpertest.KekGen(t), f)
	ring, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f)
	return ring, keyIDs(t, ring)[0]
}

// keyIDs names the keys of a keyring, primary first.
func keyIDs(t *testing.T, ring []byte) []string {
	t.Helper()
	parsed, err := kek.Parse(ring)
	if err != nil {
		t.Fatal(err)
	}
	defer parsed.Wipe()
	var ids []string
	for _, k := range parsed.Keys {
		ids = append(ids, k.ID.String())
	}
	return ids
}

// execStart matches a drop-in's ExecStart= and captures its KEK command.
// The drop-ins keep kms.service's loopback metrics and its --allow-uid 0.
var execStart = regexp.MustCompile(`(?m)^ExecStart=/usr/bin/kms --health-address=127\.0\.0\.1:9464 --allow-uid 0 --command '([^']+)'$`)

// dropinCommand returns the KEK command in a recipe's drop-in as systemd
// hands it to kms: %d is the credentials directory (creds here), $$ a $.
func dropinCommand(t *testing.T, name, creds string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dropins, name))
	if err != nil {
		t.Fatal(err)
	}
	m := execStart.FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no ExecStart=/usr/bin/kms --health-address=127.0.0.1:9464 --allow-uid 0 --command '...' line", name)
	}
	return strings.NewReplacer("%d", creds, "$$", "$").Replace(string(m[1]))
}

// check runs `kms check` on command, as the recipes' pages say to before
// starting the service, and wants the keyring's primary key in its report.
func check(t *testing.T, command, primary string) {
	t.Helper()
	out := run(t, nil, nil, testbin.KMS(t), "check", "--command", command)
	if !strings.Contains(string(out), primary+"  32 bytes  primary") {
		t.Fatalf("kms check:\n%s", out)
	}
}

// daemon is a kms daemon under test and a KMS v2 client of it.
type daemon struct {
	*testbin.Proc
	command string
	timeout time.Duration
	client  v2.KeyManagementServiceClient
	read    int // how far expect has read the log
	rings   [][]byte
}

// startDaemon runs kms on command with a --timeout short enough for an
// outage to run its course in a test (the hidden --min-timeout allows it).
// commandTimeout leaves room for the recipe's tools on a busy machine.
func startDaemon(t *testing.T, command string, timeout, commandTimeout time.Duration, args ...string) *daemon {
	t.Helper()
	sock := filepath.Join(testbin.ShortDir(t), "kms.sock")
	args = append([]string{"--command", command, "--min-timeout", "1s",
		"--timeout", timeout.String(), "--command-timeout", commandTimeout.String()}, args...)
	d := &daemon{Proc: testbin.StartKMS(t, sock, args...), command: command, timeout: timeout}
	conn := testbin.Dial(t, sock)
	t.Cleanup(func() { conn.Close() })
	d.client = v2.NewKeyManagementServiceClient(conn)
	return d
}

// expect waits until the log shows s after what earlier calls matched, and
// returns the line, which the test log keeps: the docs quote these lines.
func (d *daemon) expect(t *testing.T, s string, limit time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		log := d.Stderr()
		if i := strings.Index(log[d.read:], s); i >= 0 {
			at := d.read + i
			start := strings.LastIndexByte(log[:at], '\n') + 1
			end := strings.IndexByte(log[at:], '\n')
			if end < 0 {
				end = len(log) - at
			}
			d.read = at + end
			line := log[start : at+end]
			t.Logf("daemon: %s", line)
			return line
		}
		if time.Now().After(deadline) {
			t.Fatalf("kms did not log %q within %v:\n%s", s, limit, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// roundTrip encrypts and decrypts through the daemon, wants the key wantID
// used, and returns the ciphertext.
func (d *daemon) roundTrip(t *testing.T, what, wantID string) []byte {
	t.Helper()
	ctx := context.Background()
	enc, err := d.client.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("a DEK seed " + what), Uid: what})
	if err != nil {
		t.Fatalf("%s: Encrypt: %v", what, err)
	}
	if enc.KeyId != wantID {
		t.Fatalf("%s: key_id %s, want %s", what, enc.KeyId, wantID)
	}
	d.decrypts(t, what, enc.Ciphertext, wantID)
	return enc.Ciphertext
}

// decrypts wants ct, made by roundTrip(what) under keyID, to decrypt.
func (d *daemon) decrypts(t *testing.T, what string, ct []byte, keyID string) {
	t.Helper()
	dec, err := d.client.Decrypt(context.Background(), &v2.DecryptRequest{Ciphertext: ct, KeyId: keyID, Uid: what})
	if err != nil || string(dec.GetPlaintext()) != "a DEK seed "+what {
		t.Fatalf("%s: Decrypt: %q, %v", what, dec.GetPlaintext(), err)
	}
}

// refreshes waits for two runs of the command to succeed, the second of
// which began after the call: the key source works as it is now. The
// daemon must run with --log-level debug, which logs successful runs.
func (d *daemon) refreshes(t *testing.T) {
	t.Helper()
	for range 2 {
		d.expect(t, `msg="KEK refreshed"`, d.timeout)
	}
}

// outage breaks the key source (breakSource), and checks the course
// docs/kek.md documents: a refresh fails and the cached keys
// serve; after --timeout they are purged and calls fail with Unavailable;
// once fixSource has run, the daemon's retries restore service by
// themselves, and data written before the outage decrypts.
func (d *daemon) outage(t *testing.T, primary string, breakSource, fixSource func()) {
	t.Helper()
	before := d.roundTrip(t, "before the outage", primary)
	breakSource()
	down := time.Now()
	d.Signal(syscall.SIGHUP)
	d.expect(t, "KEK refresh failed; serving the cached KEK", d.timeout)
	d.roundTrip(t, "cached", primary)

	d.expect(t, "KEK purged", 2*d.timeout)
	if since := time.Since(down); since > 2*d.timeout {
		t.Fatalf("purged %v after the key source broke; --timeout is %v", since, d.timeout)
	}
	ctx := context.Background()
	if _, err := d.client.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("x"), Uid: "purged"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Encrypt while purged: %v, want Unavailable", err)
	}
	if _, err := d.client.Status(ctx, &v2.StatusRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Status while purged: %v, want Unavailable", err)
	}

	fixSource()
	d.expect(t, "KEK restored", d.timeout)
	st, err := d.client.Status(ctx, &v2.StatusRequest{})
	if err != nil || st.KeyId != primary || st.Healthz != "ok" {
		t.Fatalf("Status after recovery: %v, %v", st, err)
	}
	d.decrypts(t, "before the outage", before, primary)
	d.roundTrip(t, "after the outage", primary)
}

// rotate is a recipe's two-phase rotation (docs/rotation.md): the keyring
// is unsealed with the KEK command itself into a private directory, and each
// step — kek-gen --add-secondary, --promote, --retire — is sealed where the
// command reads it and loaded with SIGHUP. Data written under the old key
// decrypts throughout; new data gets the new key from the promotion on. It
// returns the new primary key_id.
func (d *daemon) rotate(t *testing.T, primary string, seal func(ring []byte)) string {
	t.Helper()
	old := d.roundTrip(t, "before rotation", primary)
	plain := filepath.Join(t.TempDir(), "kek")
	writeFile(t, plain, run(t, nil, nil, "/bin/sh", "-c", d.command))
	defer os.Remove(plain)
	step := func(args ...string) []byte {
		run(t, nil, nil, helpertest.KekGen(t), append(args, plain)...)
		ring, err := os.ReadFile(plain)
		if err != nil {
			t.Fatal(err)
		}
		d.rings = append(d.rings, ring)
		seal(ring)
		d.Signal(syscall.SIGHUP)
		return ring
	}

	// A periodic run may be under way: the SIGHUP's comes after it.
	ring := step("--add-secondary")
	d.expect(t, "keyring changed", 2*d.timeout)
	next := keyIDs(t, ring)[1]
	d.roundTrip(t, "with the new key added", primary)

	step("--promote", next)
	d.expect(t, "primary KEK changed", 2*d.timeout)
	d.roundTrip(t, "after the promotion", next)
	d.decrypts(t, "before rotation", old, primary)

	if ids := keyIDs(t, step("--retire", primary)); len(ids) != 1 || ids[0] != next {
		t.Fatalf("after --retire the keyring holds %v", ids)
	}
	d.expect(t, "keyring changed", 2*d.timeout)
	// Kept in memory, unlisted, until a restart.
	d.decrypts(t, "before rotation", old, primary)
	return next
}

// stop ends the daemon with SIGTERM, wants a clean exit and none of the
// keys of rings (the test's keyrings) in its log, and logs the log.
func (d *daemon) stop(t *testing.T, rings ...[]byte) {
	t.Helper()
	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Stderr())
	}
	for _, ring := range append(rings, d.rings...) {
		parsed, err := kek.Parse(ring)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range parsed.Keys {
			if strings.Contains(d.Stderr(), base64.StdEncoding.EncodeToString(k.Secret)) {
				t.Fatal("key material in the daemon's log")
			}
		}
		parsed.Wipe()
	}
	t.Logf("daemon log:\n%s", d.Stderr())
}
