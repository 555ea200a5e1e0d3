package service

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/keysource"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/src/transport"
)

// keyring is a keysource.Source over a keyring file the test rewrites.
type keyring struct {
	path string
	src  *keysource.Source
}

func newKeyring(t *testing.T, mode codec.Mode, timeout time.Duration, keys ...[]byte) *keyring {
	t.Helper()
	r := &keyring{path: filepath.Join(t.TempDir(), "keyring")}
	testbin.WriteKeyring(t, r.path, keys...)
	src, err := keysource.New(keysource.Config{
		Command: "cat " + r.path, Timeout: timeout, RefreshInterval: timeout / 10,
		CommandTimeout: timeout / 2, Mode: mode, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	r.src = src
	return r
}

// rotate makes keys the keyring and waits until keys[0] is primary.
func (r *keyring) rotate(t *testing.T, keys ...[]byte) {
	t.Helper()
	testbin.WriteKeyring(t, r.path, keys...)
	r.src.Refresh()
	want := keyID(keys[0])
	testbin.WaitFor(t, "the rotation", 10*time.Second, func() bool {
		id, _ := r.src.Primary()
		return id == want
	})
}

func keyID(secret []byte) string {
	k, err := kek.NewKey(bytes.Clone(secret))
	if err != nil {
		panic(err)
	}
	return k.ID.String()
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

type clients struct {
	v1 v1beta1.KeyManagementServiceClient
	v2 v2.KeyManagementServiceClient
}

func serve(t *testing.T, keys *keysource.Source) clients {
	t.Helper()
	sock := filepath.Join(testbin.ShortDir(t), "kms.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := transport.NewServer(transport.IdleTimeout)
	Register(s, keys, "test")
	go s.Serve(l)
	t.Cleanup(s.Stop)
	conn := testbin.Dial(t, sock)
	t.Cleanup(func() { conn.Close() })
	return clients{v1beta1.NewKeyManagementServiceClient(conn), v2.NewKeyManagementServiceClient(conn)}
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Errorf("%s: got %v %q, want %v containing %q", what, st.Code(), st.Message(), code, msg)
	}
}

func TestV1(t *testing.T) {
	ctx := context.Background()
	secret := random(32)
	c := serve(t, newKeyring(t, codec.AESGCM, time.Hour, secret).src)

	v, err := c.v1.Version(ctx, &v1beta1.VersionRequest{Version: "v1beta1"})
	if err != nil || v.Version != "v1beta1" || v.RuntimeName != "kms" || v.RuntimeVersion != "test" {
		t.Fatalf("Version: %v %v", v, err)
	}
	dek := random(32)
	enc, err := c.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: dek})
	if err != nil || !bytes.HasPrefix(enc.Cipher, []byte(":ck:v2:aesgcm:")) {
		t.Fatalf("Encrypt: %v", err)
	}
	dec, err := c.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: enc.Cipher})
	if err != nil || !bytes.Equal(dec.Plain, dek) {
		t.Fatalf("Decrypt: %v", err)
	}

	// A 2018 ciphertext, made here with crypto/cipher directly.
	block, _ := aes.NewCipher(secret)
	iv, body := random(16), append(bytes.Clone(dek), bytes.Repeat([]byte{16}, 16)...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(body, body)
	legacy := append(append([]byte(":ck:aescbc:v1:"), iv...), body...)
	dec, err = c.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: legacy})
	if err != nil || !bytes.Equal(dec.Plain, dek) {
		t.Fatalf("legacy Decrypt: %v", err)
	}

	for _, v := range []string{"", "v1", "v2", "V1BETA1"} {
		_, err := c.v1.Version(ctx, &v1beta1.VersionRequest{Version: v})
		wantCode(t, "Version "+v, err, codes.InvalidArgument, "unsupported KMS API version")
		_, err = c.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: v, Plain: dek})
		wantCode(t, "Encrypt "+v, err, codes.InvalidArgument, "unsupported KMS API version")
		_, err = c.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: v, Cipher: enc.Cipher})
		wantCode(t, "Decrypt "+v, err, codes.InvalidArgument, "unsupported KMS API version")
	}
	badInput(t, func(ct []byte) error {
		_, err := c.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: ct})
		return err
	}, enc.Cipher)
	_, err = c.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1"})
	wantCode(t, "empty plain", err, codes.InvalidArgument, "plaintext is empty")
	_, err = c.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: make([]byte, codec.MaxPlaintext+1)})
	wantCode(t, "huge plain", err, codes.InvalidArgument, "plaintext too large")
}

// badInput sends broken ciphertexts; each must get InvalidArgument, and the
// server must still work afterwards.
func badInput(t *testing.T, decrypt func([]byte) error, good []byte) {
	t.Helper()
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1] ^= 1
	for name, ct := range map[string][]byte{
		"empty":     nil,
		"garbage":   []byte("definitely not a ciphertext"),
		"truncated": good[:len(good)-20],
		"header":    good[:14],
		"flipped":   flipped,
		"oversized": append(bytes.Clone(good[:30]), make([]byte, codec.MaxCiphertext)...),
	} {
		wantCode(t, name, decrypt(ct), codes.InvalidArgument, "")
	}
	if err := decrypt(good); err != nil {
		t.Fatalf("server broken after bad input: %v", err)
	}
}

func TestV2(t *testing.T) {
	ctx := context.Background()
	a, b := random(32), random(16)
	ring := newKeyring(t, codec.AESCBC, time.Hour, a)
	c := serve(t, ring.src)

	st, err := c.v2.Status(ctx, &v2.StatusRequest{})
	if err != nil || st.Version != "v2" || st.Healthz != "ok" || st.KeyId != keyID(a) {
		t.Fatalf("Status: %v %v", st, err)
	}
	if len(st.KeyId) > 1024 {
		t.Fatal("key_id too long")
	}
	seed := random(32)
	enc, err := c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: seed, Uid: "u1"})
	if err != nil || enc.KeyId != st.KeyId || len(enc.Ciphertext) > 1024 || len(enc.Annotations) != 0 {
		t.Fatalf("Encrypt: %v", err)
	}
	if !bytes.HasPrefix(enc.Ciphertext, []byte(":ck:v2:aescbc:")) {
		t.Fatal("--mode aescbc not applied")
	}
	dec, err := c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "u1"})
	if err != nil || !bytes.Equal(dec.Plaintext, seed) {
		t.Fatalf("Decrypt: %v", err)
	}

	_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext})
	wantCode(t, "no key_id", err, codes.InvalidArgument, "key_id is empty")
	_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: "kek1-00000000000000000000000000000000"})
	wantCode(t, "unknown key_id", err, codes.FailedPrecondition, "is not in the keyring")
	badInput(t, func(ct []byte) error {
		_, err := c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: ct, KeyId: keyID(a)})
		return err
	}, enc.Ciphertext)
	_, err = c.v2.Encrypt(ctx, &v2.EncryptRequest{})
	wantCode(t, "empty plaintext", err, codes.InvalidArgument, "plaintext is empty")

	// Rotation: b is primary, a still decrypts.
	ring.rotate(t, b, a)
	st, _ = c.v2.Status(ctx, &v2.StatusRequest{})
	enc2, err := c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: seed})
	if err != nil || st.KeyId != keyID(b) || enc2.KeyId != keyID(b) {
		t.Fatalf("after rotation: status %s, encrypt %v", st.KeyId, err)
	}
	if _, err := c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: keyID(a)}); err != nil {
		t.Fatalf("old data after rotation: %v", err)
	}
	_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: keyID(b)})
	wantCode(t, "mismatched key_id", err, codes.InvalidArgument, "does not match the ciphertext")

	// a is no longer listed: it stays in memory, for decryption only.
	ring.rotate(t, b)
	if _, err := c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: keyID(a)}); err != nil {
		t.Fatalf("retired key: %v", err)
	}
	// A daemon that never held a: a's data gets a clear error naming the key.
	c = serve(t, newKeyring(t, codec.AESCBC, time.Hour, b).src)
	_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: keyID(a)})
	wantCode(t, "removed key", err, codes.FailedPrecondition, keyID(a))
}

func TestPurgedIsUnavailable(t *testing.T) {
	ctx := context.Background()
	k := random(32)
	ring := newKeyring(t, codec.AESGCM, time.Second, k)
	c := serve(t, ring.src)
	enc, _ := c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed")})

	os.Remove(ring.path)
	testbin.WaitFor(t, "the purge", 10*time.Second, func() bool {
		_, err := ring.src.Primary()
		return err != nil
	})
	_, err := c.v2.Status(ctx, &v2.StatusRequest{})
	wantCode(t, "Status", err, codes.Unavailable, "purged")
	_, err = c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed")})
	wantCode(t, "v2 Encrypt", err, codes.Unavailable, "purged")
	_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
	wantCode(t, "v2 Decrypt", err, codes.Unavailable, "purged")
	_, err = c.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: []byte("dek")})
	wantCode(t, "v1 Encrypt", err, codes.Unavailable, "purged")

	testbin.WriteKeyring(t, ring.path, k)
	testbin.WaitFor(t, "the keys to come back", 10*time.Second, func() bool {
		_, err := ring.src.Primary()
		return err == nil
	})
	if _, err := c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}
