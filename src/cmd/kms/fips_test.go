package main

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec/codectest"
	"github.com/cmdkms/kms/src/testbin"
)

// fipsOnly is the environment of a daemon in FIPS 140-only mode, where Go's
// Cryptographic Module refuses, by an error or a panic, every algorithm
// that FIPS 140-3 does not approve.
func fipsOnly() []string { return append(os.Environ(), "GODEBUG=fips140=only") }

// In FIPS 140-only mode the daemon serves KMS v1 and v2 with both codecs
// and reads every format it wrote before: the 2018 one, and aesgcm and
// aescbc made with fixed nonces outside kms.
func TestFIPS140Only(t *testing.T) {
	cmd := exec.Command(testbin.KMS(t), "--version")
	cmd.Env = fipsOnly()
	if out, err := cmd.Output(); err != nil || !strings.Contains(string(out), " enabled\n") {
		t.Fatalf("--version under GODEBUG=fips140=only: %q, %v", out, err)
	}

	dir := testbin.ShortDir(t)
	ring := filepath.Join(dir, "ring")
	primary := testbin.NewKey()
	legacy := codectest.LegacyVectors[0]
	keys := [][]byte{primary, legacy.Key()}
	stored := map[string]string{string(legacy.Ciphertext()): legacy.Plain} // ciphertext: plaintext
	for _, v := range codectest.Vectors {
		keys = append(keys, v.Key())
		stored[string(v.Ciphertext())] = v.Plain
	}
	testbin.WriteKeyring(t, ring, keys...)

	for _, mode := range []string{"aesgcm", "aescbc"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			sock := filepath.Join(dir, mode+".sock")
			cmd := exec.Command(testbin.KMS(t), "--command", "cat "+ring, "--mode", mode, "--endpoint", "unix://"+sock)
			cmd.Env = fipsOnly()
			d := connect(t, testbin.Start(t, cmd, testbin.Ready), sock)
			if !strings.Contains(d.Stderr(), " enabled\"") {
				t.Fatalf("the start does not log FIPS 140-3 mode: %s", d.Stderr())
			}

			seed := []byte("a 32-byte seed for KMS v2 DEKs!!")
			enc2, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: seed})
			if err != nil || !bytes.HasPrefix(enc2.Ciphertext, []byte(":ck:v2:"+mode+":")) {
				t.Fatalf("v2 Encrypt: %v", err)
			}
			dec2, err := d.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc2.Ciphertext, KeyId: enc2.KeyId})
			if err != nil || !bytes.Equal(dec2.Plaintext, seed) {
				t.Fatalf("v2 Decrypt: %v", err)
			}
			enc1, err := d.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: seed})
			if err != nil {
				t.Fatalf("v1 Encrypt: %v", err)
			}
			read := maps.Clone(stored)
			read[string(enc1.Cipher)] = string(seed)
			for ct, plain := range read {
				dec, err := d.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: []byte(ct)})
				if err != nil || string(dec.Plain) != plain {
					t.Fatalf("v1 Decrypt of %.14q: %v", ct, err)
				}
			}
		})
	}
}

// The FIPS builds' own check: //src/cmd/kms:kms_fips_test runs this
// package's tests against the FIPS test build ($KMS_BINARY) and names the
// shipped one, //:kms_fips, in $KMS_FIPS_RELEASE, and in $KMS_FIPS140 the
// module version and mode the --version of both must print with no GODEBUG
// set. The shipped one, like any release build, has no test-only flags
// (TestReleaseBuildKeepsTheFloors checks this package's own build).
func TestFIPS140Build(t *testing.T) {
	want := os.Getenv("KMS_FIPS140")
	if want == "" {
		t.Skip("$KMS_FIPS140 is unset: not the FIPS build")
	}
	if os.Getenv("KMS_FIPS_RELEASE") == "" {
		t.Fatal("$KMS_FIPS_RELEASE names no release build")
	}
	release := testbin.Binary(t, "KMS_FIPS_RELEASE", testbin.KMSPackage)
	noGODEBUG := slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "GODEBUG=") })
	for _, bin := range []string{testbin.KMS(t), release} {
		cmd := exec.Command(bin, "--version")
		cmd.Env = noGODEBUG
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), "\nfips140: "+want+"\n") {
			t.Errorf("%s --version: %q, %v; want fips140: %s", bin, out, err, want)
		}
	}
	for _, flag := range []string{"--min-timeout", "--idle-timeout"} {
		out, err := exec.Command(release, "--command", "true", flag, "1s").CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "unknown flag: "+flag) {
			t.Errorf("%s %s 1s: %v, %q; want exit 2, unknown flag", release, flag, err, out)
		}
	}
}
