package load

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
)

// V1APIVersion is the version field every v1beta1 request carries.
const V1APIVersion = "v1beta1"

// Client is one gRPC connection to a plugin with both API clients. All
// callers share it, as kube-apiserver shares one connection per provider.
type Client struct {
	Conn *grpc.ClientConn
	V1   v1beta1.KeyManagementServiceClient
	V2   v2.KeyManagementServiceClient
}

// Dial connects to endpoint ("unix:///path"). It does not wait for the
// server: the first call does.
func Dial(endpoint string) (*Client, error) {
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &Client{conn, v1beta1.NewKeyManagementServiceClient(conn), v2.NewKeyManagementServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// Kind is one of the calls a workload makes.
type Kind string

const (
	V1Encrypt Kind = "v1enc"
	V1Decrypt Kind = "v1dec"
	V2Encrypt Kind = "v2enc"
	V2Decrypt Kind = "v2dec"
	Status    Kind = "status"
)

// AllKinds is the default mix: each call as often as the others.
var AllKinds = []Kind{V1Encrypt, V1Decrypt, V2Encrypt, V2Decrypt, Status}

// ParseKinds reads a comma-separated list such as "v1dec,v2dec".
func ParseKinds(s string) ([]Kind, error) {
	var out []Kind
	for _, f := range strings.Split(s, ",") {
		k := Kind(strings.TrimSpace(f))
		switch k {
		case V1Encrypt, V1Decrypt, V2Encrypt, V2Decrypt, Status:
			out = append(out, k)
		default:
			return nil, fmt.Errorf("unknown call %q: want some of %v", f, AllKinds)
		}
	}
	return out, nil
}

// DEKSize is what kube-apiserver asks a plugin to encrypt: a 32-byte DEK
// (KMS v1) or seed (KMS v2).
const DEKSize = 32

// Corpus is a set of DEKs encrypted by one plugin through both APIs, so
// decrypt calls have real ciphertexts to open and a known answer.
type Corpus struct {
	Plain [][]byte
	V1    [][]byte
	V2    []*v2.EncryptResponse
}

// NewCorpus encrypts n random DEKs through c with each API.
func NewCorpus(ctx context.Context, c *Client, n int) (*Corpus, error) {
	cp := &Corpus{}
	for range n {
		p := make([]byte, DEKSize)
		rand.Read(p)
		e1, err := c.V1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: V1APIVersion, Plain: p})
		if err != nil {
			return nil, fmt.Errorf("v1 Encrypt: %w", err)
		}
		e2, err := c.V2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: p, Uid: "bench"})
		if err != nil {
			return nil, fmt.Errorf("v2 Encrypt: %w", err)
		}
		cp.Plain, cp.V1, cp.V2 = append(cp.Plain, p), append(cp.V1, e1.Cipher), append(cp.V2, e2)
	}
	return cp, nil
}

// Workload makes the calls in kinds in turn; decrypts check the answer.
func (cp *Corpus) Workload(c *Client, kinds []Kind, opts ...grpc.CallOption) Op {
	return func(ctx context.Context, _, seq int) error {
		i := seq / len(kinds) % len(cp.Plain)
		var err error
		switch kinds[seq%len(kinds)] {
		case V1Encrypt:
			_, err = c.V1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: V1APIVersion, Plain: cp.Plain[i]}, opts...)
		case V1Decrypt:
			var r *v1beta1.DecryptResponse
			if r, err = c.V1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: V1APIVersion, Cipher: cp.V1[i]}, opts...); err == nil && !bytes.Equal(r.Plain, cp.Plain[i]) {
				err = ErrWrongPlaintext
			}
		case V2Encrypt:
			_, err = c.V2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: cp.Plain[i], Uid: "bench"}, opts...)
		case V2Decrypt:
			var r *v2.DecryptResponse
			e := cp.V2[i]
			if r, err = c.V2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId, Uid: "bench"}, opts...); err == nil && !bytes.Equal(r.Plaintext, cp.Plain[i]) {
				err = ErrWrongPlaintext
			}
		case Status:
			_, err = c.V2.Status(ctx, &v2.StatusRequest{}, opts...)
		}
		return err
	}
}
