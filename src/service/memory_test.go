package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/keysource"
)

// fakeKeys is a key cache in memory: the keys of set, or err from every
// method when err is set.
type fakeKeys struct {
	set  *codec.Set
	mode codec.Mode
	err  error
}

func newFakeKeys(t *testing.T, secrets ...[]byte) *fakeKeys {
	t.Helper()
	var keys []*codec.Key
	for _, s := range secrets {
		k, err := kek.NewKey(s)
		if err != nil {
			t.Fatal(err)
		}
		ck, err := codec.NewKey(k)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, ck)
	}
	return &fakeKeys{set: codec.NewSet(keys)}
}

func (f *fakeKeys) Encrypt(p []byte) ([]byte, string, error) {
	if f.err != nil {
		return nil, "", f.err
	}
	ct, err := f.set.Encrypt(f.mode, p)
	return ct, f.set.Primary().KeyID, err
}

func (f *fakeKeys) Decrypt(ct []byte) ([]byte, string, error) {
	if f.err != nil {
		return nil, "", f.err
	}
	p, k, err := f.set.Decrypt(ct)
	if err != nil {
		return nil, "", err
	}
	return p, k.KeyID, nil
}

func (f *fakeKeys) Primary() (string, error) {
	if f.err != nil {
		return "", f.err
	}
	return f.set.Primary().KeyID, nil
}

func (f *fakeKeys) Mode() codec.Mode { return f.mode }

func (f *fakeKeys) Holds(id string) (bool, error) {
	if f.err != nil {
		return false, f.err
	}
	for _, k := range f.set.Keys() {
		if k.KeyID == id {
			return true, nil
		}
	}
	return false, nil
}

// serveInMemory serves keys on an in-memory connection.
func serveInMemory(t *testing.T, keys Keys) clients {
	t.Helper()
	l := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	Register(s, keys, "test")
	go s.Serve(l)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("passthrough:///memory",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return clients{v1beta1.NewKeyManagementServiceClient(conn), v2.NewKeyManagementServiceClient(conn)}
}

// How the key cache's errors reach clients: purged (also wrapped) is
// Unavailable everywhere, an unknown key FailedPrecondition, anything else
// from Encrypt Internal.
func TestErrorCodesInMemory(t *testing.T) {
	ctx := context.Background()
	a, b := random(32), random(16)
	keys := newFakeKeys(t, a)
	c := serveInMemory(t, keys)
	enc, err := c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed")})
	if err != nil || enc.KeyId != keyID(a) {
		t.Fatalf("Encrypt: %v", err)
	}
	v1enc, err := c.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: []byte("dek")})
	if err != nil {
		t.Fatalf("v1 Encrypt: %v", err)
	}

	for _, purged := range []error{keysource.ErrPurged, fmt.Errorf("loading: %w", keysource.ErrPurged)} {
		keys.err = purged
		_, err = c.v2.Status(ctx, &v2.StatusRequest{})
		wantCode(t, "Status", err, codes.Unavailable, "purged")
		_, err = c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed")})
		wantCode(t, "v2 Encrypt", err, codes.Unavailable, "purged")
		_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
		wantCode(t, "v2 Decrypt", err, codes.Unavailable, "purged")
		_, err = c.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: []byte("dek")})
		wantCode(t, "v1 Encrypt", err, codes.Unavailable, "purged")
		_, err = c.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: v1enc.Cipher})
		wantCode(t, "v1 Decrypt", err, codes.Unavailable, "purged")
	}
	keys.err = errors.New("the cipher broke")
	_, err = c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed")})
	wantCode(t, "failing Encrypt", err, codes.Internal, "the cipher broke")

	// A daemon that holds only b: a's ciphertexts name a key it lacks.
	c = serveInMemory(t, newFakeKeys(t, b))
	_, err = c.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: v1enc.Cipher})
	wantCode(t, "v1 Decrypt, unknown key", err, codes.FailedPrecondition, "")
	_, err = c.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
	wantCode(t, "v2 Decrypt, unknown key", err, codes.FailedPrecondition, keyID(a))
}

// In legacy mode KMS v2 Encrypt is refused (legacy mode is for nodes beside
// 2018 daemons, which speak KMS v1 only), while KMS v1 writes the 2018 format.
func TestLegacyModeInMemory(t *testing.T) {
	ctx := context.Background()
	keys := newFakeKeys(t, random(32))
	keys.mode = codec.Legacy
	c := serveInMemory(t, keys)
	_, err := c.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed")})
	wantCode(t, "v2 Encrypt in legacy mode", err, codes.FailedPrecondition, "--mode legacy")
	enc, err := c.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: []byte("dek")})
	if err != nil {
		t.Fatalf("v1 Encrypt in legacy mode: %v", err)
	}
	if !bytes.HasPrefix(enc.Cipher, []byte(":ck:aescbc:v1:")) {
		t.Fatalf("v1 Encrypt in legacy mode wrote %q, not the 2018 format", enc.Cipher[:min(len(enc.Cipher), 20)])
	}
}
