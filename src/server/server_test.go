package server

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
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
)

// swappable stands in for keysource.Source: the test decides what is loaded.
type swappable struct{ p atomic.Pointer[codec.Set] }

func (s *swappable) Keys() *codec.Set { return s.p.Load() }

func key(t *testing.T, secret []byte) *codec.Key {
	r, err := kek.Parse(secret)
	if err != nil {
		t.Fatal(err)
	}
	k, err := codec.NewKey(r.Keys[0])
	if err != nil {
		t.Fatal(err)
	}
	return k
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

func serve(t *testing.T, keys Keys, mode codec.Mode) clients {
	t.Helper()
	sock := filepath.Join(testbin.ShortDir(t), "kms.sock")
	l, err := Listen("unix://"+sock, 0o600, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s := NewGRPCServer()
	Register(s, keys, mode, "test")
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
	keys := &swappable{}
	secret := random(32)
	keys.p.Store(codec.NewSet([]*codec.Key{key(t, secret)}))
	c := serve(t, keys, codec.AESGCM)

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
	keys := &swappable{}
	a, b := key(t, random(32)), key(t, random(16))
	keys.p.Store(codec.NewSet([]*codec.Key{a}))
	c := serve(t, keys, codec.AESCBC)

	st, err := c.v2.Status(ctx, &v2.StatusRequest{})
	if err != nil || st.Version != "v2" || st.Healthz != "ok" || st.KeyId != a.KeyID {
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
		_, err := c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: ct, KeyId: a.KeyID})
		return err
	}, enc.Ciphertext)
	_, err = c.v2.Encrypt(ctx, &v2.EncryptRequest{})
	wantCode(t, "empty plaintext", err, codes.InvalidArgument, "plaintext is empty")

	// Rotation: b is primary, a still decrypts.
	keys.p.Store(codec.NewSet([]*codec.Key{b, a}))
	st, _ = c.v2.Status(ctx, &v2.StatusRequest{})
	enc2, err := c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: seed})
	if err != nil || st.KeyId != b.KeyID || enc2.KeyId != b.KeyID {
		t.Fatalf("after rotation: status %s, encrypt %v", st.KeyId, err)
	}
	if _, err := c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: a.KeyID}); err != nil {
		t.Fatalf("old data after rotation: %v", err)
	}
	_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: b.KeyID})
	wantCode(t, "mismatched key_id", err, codes.InvalidArgument, "does not match the ciphertext")

	// Only b is left: a's data gets a clear error naming the key.
	keys.p.Store(codec.NewSet([]*codec.Key{b}))
	_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: a.KeyID})
	wantCode(t, "removed key", err, codes.FailedPrecondition, a.KeyID)
}

func TestPurgedIsUnavailable(t *testing.T) {
	ctx := context.Background()
	keys := &swappable{}
	k := key(t, random(32))
	keys.p.Store(codec.NewSet([]*codec.Key{k}))
	c := serve(t, keys, codec.AESGCM)
	enc, _ := c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed")})

	keys.p.Store(nil)
	_, err := c.v2.Status(ctx, &v2.StatusRequest{})
	wantCode(t, "Status", err, codes.Unavailable, "purged")
	_, err = c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed")})
	wantCode(t, "v2 Encrypt", err, codes.Unavailable, "purged")
	_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
	wantCode(t, "v2 Decrypt", err, codes.Unavailable, "purged")
	_, err = c.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: []byte("dek")})
	wantCode(t, "v1 Encrypt", err, codes.Unavailable, "purged")

	keys.p.Store(codec.NewSet([]*codec.Key{k}))
	if _, err := c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}

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
