package backends

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/testbin"
)

// softhsm2 is Debian's SoftHSM2 PKCS#11 module, the HSM of this test; the
// drop-in names it where an operator puts the HSM vendor's module.
const softhsm2 = "/usr/lib/softhsm/libsofthsm2.so"

// p11 runs pkcs11-tool on the token "kms" with the PIN from the environment
// variable KMS_HSM_PIN, the way docs/backends/pkcs11.md does.
func p11(t *testing.T, pin string, args ...string) []byte {
	t.Helper()
	return run(t, []string{"KMS_HSM_PIN=" + pin}, nil, "pkcs11-tool",
		append([]string{"--module", softhsm2, "--token-label", "kms", "--pin", "env:KMS_HSM_PIN"}, args...)...)
}

// The PKCS#11 recipe (docs/backends/pkcs11.md): the keyring encrypted with
// AES-CBC-PAD by a 256-bit key generated inside the HSM (SoftHSM2 here),
// never extractable, and the daemon running the drop-in's pkcs11-tool
// --decrypt with the PIN from a credential file. Pulling the token is the
// outage; putting it back ends it.
func TestPKCS11(t *testing.T) {
	need(t, "softhsm2 opensc", "pkcs11-tool", softhsm2)
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	writeFile(t, conf, []byte("directories.tokendir = "+tokens+"\n"))
	// The daemon's KEK command inherits this; on a node SoftHSM reads /etc/softhsm.
	t.Setenv("SOFTHSM2_CONF", conf)

	// Provisioning. The PINs only ever travel in the environment (env:NAME).
	const soPIN, pin = "so-8c1e4d7a", "user-5b93f0e2"
	run(t, []string{"KMS_HSM_SO_PIN=" + soPIN}, nil, "pkcs11-tool", "--module", softhsm2,
		"--init-token", "--slot-index", "0", "--label", "kms", "--so-pin", "env:KMS_HSM_SO_PIN")
	run(t, []string{"KMS_HSM_SO_PIN=" + soPIN, "KMS_HSM_PIN=" + pin}, nil, "pkcs11-tool", "--module", softhsm2,
		"--token-label", "kms", "--login", "--login-type", "so", "--so-pin", "env:KMS_HSM_SO_PIN",
		"--init-pin", "--new-pin", "env:KMS_HSM_PIN")
	p11(t, pin, "--keygen", "--key-type", "AES:32", "--label", "kms-kek-wrap",
		"--sensitive", "--private", "--usage-decrypt", "--allowed-mechanisms", "AES-CBC-PAD")
	if objs := string(p11(t, pin, "--list-objects", "--type", "secrkey")); !strings.Contains(objs, "never extractable") {
		t.Fatalf("the wrapping key can leave the HSM:\n%s", objs)
	}
	if out := fails(t, []string{"KMS_HSM_PIN=" + pin}, nil, "pkcs11-tool", "--module", softhsm2, "--token-label", "kms",
		"--pin", "env:KMS_HSM_PIN", "--read-object", "--type", "secrkey", "--label", "kms-kek-wrap"); !strings.Contains(out, "CKR_ATTRIBUTE_SENSITIVE") {
		t.Fatalf("reading the wrapping key: %s", out)
	}

	creds := t.TempDir()
	writeFile(t, filepath.Join(creds, "hsm-pin"), []byte(pin+"\n"))
	ring, primary := newKeyring(t)
	seal := func(ring []byte) {
		plain := filepath.Join(t.TempDir(), "kek")
		writeFile(t, plain, ring)
		iv := make([]byte, 16)
		rand.Read(iv)
		writeFile(t, filepath.Join(creds, "kek.iv"), []byte(hex.EncodeToString(iv)+"\n"))
		p11(t, pin, "--encrypt", "--mechanism", "AES-CBC-PAD", "--iv", hex.EncodeToString(iv), "--label", "kms-kek-wrap",
			"--input-file", plain, "--output-file", filepath.Join(creds, "kek.p11"))
		os.Remove(plain)
	}
	seal(ring)
	command := dropinCommand(t, "pkcs11.conf", creds)
	if strings.Contains(command, pin) {
		t.Fatal("the PIN is on the command line")
	}
	check(t, command, primary)

	// A wrong PIN: what `kms check` and the daemon's log say.
	writeFile(t, filepath.Join(creds, "hsm-pin"), []byte("not-the-pin\n"))
	out := fails(t, nil, nil, testbin.KMS(t), "check", "--command", command)
	t.Logf("kms check with a wrong PIN: %s", out)
	writeFile(t, filepath.Join(creds, "hsm-pin"), []byte(pin+"\n"))

	d := startDaemon(t, command, 4*time.Second, 3*time.Second)
	token, err := filepath.Glob(filepath.Join(tokens, "*"))
	if err != nil || len(token) != 1 {
		t.Fatalf("token directories: %v %v", token, err)
	}
	pulled := filepath.Join(dir, "pulled")
	d.outage(t, primary,
		func() { mustRename(t, token[0], pulled) },
		func() { mustRename(t, pulled, token[0]) })
	d.rotate(t, primary, seal)
	if strings.Contains(d.Stderr(), pin) {
		t.Fatal("the PIN is in the daemon's log")
	}
	d.stop(t, ring)
}

func mustRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}
