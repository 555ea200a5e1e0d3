package main

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec/codectest"
	"github.com/cmdkms/kms/src/testbin"
)

func (d *daemon) encryptV1(t *testing.T, plain string) []byte {
	t.Helper()
	enc, err := d.v1.Encrypt(context.Background(), &v1beta1.EncryptRequest{Version: "v1beta1", Plain: []byte(plain)})
	if err != nil {
		t.Fatalf("Encrypt %q: %v", plain, err)
	}
	return enc.Cipher
}

func (d *daemon) wantDecryptV1(t *testing.T, ct []byte, plain string) {
	t.Helper()
	dec, err := d.v1.Decrypt(context.Background(), &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: ct})
	if err != nil || string(dec.GetPlain()) != plain {
		t.Fatalf("Decrypt, want %q: %q, %v", plain, dec.GetPlain(), err)
	}
}

// The move from the 2018 daemon (docs/rotation.md, "From the 2018
// daemon"): in the first round kms runs --mode legacy on the 2018 raw key,
// and what it writes is read by a decoder that knows only the 2018 format
// (codectest.LegacyDecrypt, the 2018 daemon's decryption) and by kms in the
// second round's aesgcm mode. What the second round writes, the 2018 format
// cannot read; kms in legacy mode, the rollback target, reads it.
func TestLegacyModeRounds(t *testing.T) {
	dir := testbin.ShortDir(t)
	key := testbin.NewKey()
	raw := filepath.Join(dir, "kek.bin")
	os.WriteFile(raw, key, 0o600)
	legacy := startDaemon(t, filepath.Join(dir, "legacy.sock"), "--command", "cat "+raw, "--mode", "legacy")
	gcm := startDaemon(t, filepath.Join(dir, "gcm.sock"), "--command", "cat "+raw)

	first := legacy.encryptV1(t, "a DEK of round 1")
	if p, ok := codectest.LegacyDecrypt(key, first); !ok || string(p) != "a DEK of round 1" {
		t.Fatalf("the 2018 format cannot read --mode legacy's %q", first)
	}
	gcm.wantDecryptV1(t, first, "a DEK of round 1")

	second := gcm.encryptV1(t, "a DEK of round 2")
	if _, ok := codectest.LegacyDecrypt(key, second); ok {
		t.Fatal("the 2018 format read --mode aesgcm's ciphertext")
	}
	legacy.wantDecryptV1(t, second, "a DEK of round 2")

	// KMS v2 under legacy: refused, clearly; its health still answers.
	ctx := context.Background()
	_, err := legacy.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed"), Uid: "u"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "--mode legacy") {
		t.Fatalf("KMS v2 Encrypt under --mode legacy: %v", err)
	}
	keyStatus(t, legacy)
}

// With a keyring, --mode legacy writes with the primary key only, as the
// 2018 daemon had one key, and reads with every key.
func TestLegacyModeKeyring(t *testing.T) {
	dir := testbin.ShortDir(t)
	primary, old := testbin.NewKey(), testbin.NewKey()
	ring := filepath.Join(dir, "kek")
	os.WriteFile(ring, []byte("kms-keyring v1\n"+base64.StdEncoding.EncodeToString(primary)+"\n"+base64.StdEncoding.EncodeToString(old)+"\n"), 0o600)
	d := startDaemon(t, filepath.Join(dir, "kms.sock"), "--command", "cat "+ring, "--mode", "legacy")

	ct := d.encryptV1(t, "a DEK")
	if p, ok := codectest.LegacyDecrypt(primary, ct); !ok || string(p) != "a DEK" {
		t.Fatal("not written with the primary key in the 2018 format")
	}
	// A wrong key passes the 2018 format's padding check by chance (about
	// one time in 256), so what matters is that it does not give the DEK.
	if p, ok := codectest.LegacyDecrypt(old, ct); ok && string(p) == "a DEK" {
		t.Fatal("the secondary key opens it")
	}
	var iv [16]byte
	d.wantDecryptV1(t, codectest.LegacyEncrypt(old, iv[:], []byte("a DEK of 2018")), "a DEK of 2018")
}
