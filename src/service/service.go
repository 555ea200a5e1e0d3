// Package service implements KMS v1beta1 and v2 (the two APIs
// kube-apiserver calls) over the keys of a key cache (Keys; the daemon's is
// a keysource.Source).
package service

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/keysource"
)

// Keys is what the services need of the key cache. While no keys are
// loaded every method fails with keysource.ErrPurged.
type Keys interface {
	// Encrypt seals plaintext with the primary key and names it.
	Encrypt(plaintext []byte) (ciphertext []byte, keyID string, err error)
	// Decrypt opens a ciphertext and names the key that opened it.
	Decrypt(ciphertext []byte) (plaintext []byte, keyID string, err error)
	// Primary names the key that encrypts.
	Primary() (keyID string, err error)
	// Holds says whether keyID names a key held.
	Holds(keyID string) (bool, error)
	// Mode is the codec Encrypt writes: KMS v2 refuses the 2018 one.
	Mode() codec.Mode
}

// Register adds both KMS services to s, serving keys; version is reported
// by v1beta1's Version.
func Register(s *grpc.Server, keys Keys, version string) {
	v1beta1.RegisterKeyManagementServiceServer(s, &v1Service{keys: keys, version: version})
	v2.RegisterKeyManagementServiceServer(s, &v2Service{keys: keys})
}

const (
	v1APIVersion = "v1beta1"
	v2APIVersion = "v2"
)

// Prebuilt so the common error paths cost no formatting.
var (
	errPurged       = status.Error(codes.Unavailable, keysource.ErrPurged.Error()+"; see the kms daemon's log")
	errDecrypt      = status.Error(codes.InvalidArgument, codec.ErrDecrypt.Error())
	errEmptyPlain   = status.Error(codes.InvalidArgument, "plaintext is empty")
	errEmptyCipher  = status.Error(codes.InvalidArgument, "ciphertext is empty")
	errMissingKeyID = status.Error(codes.InvalidArgument, "key_id is empty; pass the key_id that Encrypt returned")
	// The 2018 format exists for the 2018 daemon, which spoke KMS v1 only;
	// under KMS v2 it would only give up authentication. kube-apiserver's
	// probe of every v2 provider, read-only ones too, calls Encrypt, so a v2
	// provider on a legacy kms shows unhealthy with this reason: --mode
	// legacy belongs to the KMS v1 rounds of a move from 2018.
	errLegacyV2 = status.Error(codes.FailedPrecondition, "kms runs with --mode legacy, which writes the 2018 format for KMS v1 only; a KMS v2 provider needs --mode aesgcm")
)

func encrypt(keys Keys, plaintext []byte) (ciphertext []byte, keyID string, err error) {
	if len(plaintext) == 0 {
		return nil, "", errEmptyPlain
	}
	ciphertext, keyID, err = keys.Encrypt(plaintext)
	switch {
	case errors.Is(err, keysource.ErrPurged):
		return nil, "", errPurged
	case errors.Is(err, codec.ErrTooLarge):
		return nil, "", status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, "", status.Errorf(codes.Internal, "encrypt: %v", err)
	}
	return ciphertext, keyID, nil
}

// decryptError maps errors to gRPC codes: an unknown key is a state the
// operator can fix (FailedPrecondition); anything else is bad input.
func decryptError(err error) error {
	switch {
	case errors.Is(err, keysource.ErrPurged):
		return errPurged
	case errors.Is(err, codec.ErrDecrypt):
		return errDecrypt
	case errors.Is(err, codec.ErrUnknownKey):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.InvalidArgument, err.Error())
}

type v1Service struct {
	v1beta1.UnimplementedKeyManagementServiceServer
	keys    Keys
	version string
}

// checkVersion refuses any API version but v1beta1, as the 2018 daemon did.
func checkVersion(v string) error {
	if v != v1APIVersion {
		return status.Errorf(codes.InvalidArgument, "unsupported KMS API version %q; this service speaks %q", v, v1APIVersion)
	}
	return nil
}

func (s *v1Service) Version(_ context.Context, req *v1beta1.VersionRequest) (*v1beta1.VersionResponse, error) {
	if err := checkVersion(req.Version); err != nil {
		return nil, err
	}
	return &v1beta1.VersionResponse{Version: v1APIVersion, RuntimeName: "kms", RuntimeVersion: s.version}, nil
}

func (s *v1Service) Encrypt(_ context.Context, req *v1beta1.EncryptRequest) (*v1beta1.EncryptResponse, error) {
	if err := checkVersion(req.Version); err != nil {
		return nil, err
	}
	ct, _, err := encrypt(s.keys, req.Plain)
	if err != nil {
		return nil, err
	}
	return &v1beta1.EncryptResponse{Cipher: ct}, nil
}

func (s *v1Service) Decrypt(_ context.Context, req *v1beta1.DecryptRequest) (*v1beta1.DecryptResponse, error) {
	if err := checkVersion(req.Version); err != nil {
		return nil, err
	}
	if len(req.Cipher) == 0 {
		return nil, errEmptyCipher
	}
	p, _, err := s.keys.Decrypt(req.Cipher)
	if err != nil {
		return nil, decryptError(err)
	}
	return &v1beta1.DecryptResponse{Plain: p}, nil
}

type v2Service struct {
	v2.UnimplementedKeyManagementServiceServer
	keys Keys
}

// Status fails while purged rather than answering healthz != "ok": with a
// valid key_id kube-apiserver would keep writing under its cached DEK.
func (s *v2Service) Status(context.Context, *v2.StatusRequest) (*v2.StatusResponse, error) {
	id, err := s.keys.Primary()
	if err != nil {
		return nil, errPurged
	}
	return &v2.StatusResponse{Version: v2APIVersion, Healthz: "ok", KeyId: id}, nil
}

// Encrypt returns no annotations: the ciphertext header already names
// codec and key.
func (s *v2Service) Encrypt(_ context.Context, req *v2.EncryptRequest) (*v2.EncryptResponse, error) {
	if s.keys.Mode() == codec.Legacy {
		return nil, errLegacyV2
	}
	ct, id, err := encrypt(s.keys, req.Plaintext)
	if err != nil {
		return nil, err
	}
	return &v2.EncryptResponse{Ciphertext: ct, KeyId: id}, nil
}

func (s *v2Service) Decrypt(_ context.Context, req *v2.DecryptRequest) (*v2.DecryptResponse, error) {
	if len(req.Ciphertext) == 0 {
		return nil, errEmptyCipher
	}
	if req.KeyId == "" {
		return nil, errMissingKeyID
	}
	switch held, err := s.keys.Holds(req.KeyId); {
	case err != nil:
		return nil, errPurged
	case !held:
		return nil, status.Errorf(codes.FailedPrecondition,
			"key_id %.80q is not in the keyring; keys the command no longer lists are kept only until a restart or purge", req.KeyId)
	}
	p, id, err := s.keys.Decrypt(req.Ciphertext)
	if err != nil {
		return nil, decryptError(err)
	}
	if id != req.KeyId {
		clear(p)
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf(
			"key_id %.80q does not match the ciphertext, which was made with %s", req.KeyId, id))
	}
	return &v2.DecryptResponse{Plaintext: p}, nil
}
