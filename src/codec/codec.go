// Package codec encrypts and decrypts data encryption keys under a set of
// KEKs. Ciphertext formats (see docs/kek.md):
//
//	legacy (2018):               ":ck:aescbc:v1:" ‖ IV(16) ‖ AES-CBC(PKCS#7(p))
//	aesgcm:                      ":ck:v2:aesgcm:" ‖ key id(16) ‖ nonce(12) ‖ AES-GCM(p), header as AAD
//	aescbc:                      ":ck:v2:aescbc:" ‖ key id(16) ‖ IV(16) ‖ AES-CBC(PKCS#7(p))
//
// The header names codec and key, so Decrypt never depends on the current
// --mode or on which key is primary.
package codec

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/cmdkms/kms/src/kek"
)

// Mode is the codec used for new ciphertexts.
type Mode uint8

const (
	AESGCM Mode = iota
	AESCBC
	// Legacy writes the 2018 daemon's format with the primary key, so that
	// 2018 daemons still running beside kms can read what kms writes. The
	// format names no key: the 2018 daemon held one raw key and kms tries
	// every key it holds.
	Legacy
)

func (m Mode) String() string {
	switch m {
	case AESCBC:
		return "aescbc"
	case Legacy:
		return "legacy"
	}
	return "aesgcm"
}

// ParseMode reads a --mode value.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "aesgcm":
		return AESGCM, nil
	case "aescbc":
		return AESCBC, nil
	case "legacy":
		return Legacy, nil
	}
	return 0, fmt.Errorf("unknown mode %q: want aesgcm, aescbc or legacy", s)
}

const (
	legacyHeader = ":ck:aescbc:v1:"
	gcmHeader    = ":ck:v2:aesgcm:"
	cbcHeader    = ":ck:v2:aescbc:"
	tagLen       = len(gcmHeader) // all three tags have the same length
	headerLen    = tagLen + kek.IDSize
	nonceLen     = 12
	gcmOverhead  = 16
)

// MaxPlaintext bounds what Encrypt accepts. kube-apiserver sends 32-byte
// DEKs and seeds; the bound keeps a misbehaving client from making the
// daemon allocate at will.
const MaxPlaintext = 64 << 10

// MaxCiphertext is the largest ciphertext Encrypt can produce.
const MaxCiphertext = headerLen + aes.BlockSize + MaxPlaintext + aes.BlockSize

var (
	// ErrMalformed: the input is not a ciphertext this codec can parse.
	ErrMalformed = errors.New("malformed ciphertext")
	// ErrUnknownKey: the ciphertext names a key that is not loaded.
	ErrUnknownKey = errors.New("unknown key")
	// ErrDecrypt is the only error for a ciphertext that parses but does not
	// decrypt. CBC padding failures and GCM tag failures look the same, so
	// there is no padding oracle.
	ErrDecrypt = errors.New("decryption failed: wrong key or corrupted ciphertext")
	// ErrTooLarge: the plaintext exceeds MaxPlaintext.
	ErrTooLarge = errors.New("plaintext too large")
)

// Key is a KEK with its AES state, set up once so requests pay only for
// the encryption itself. It keeps no separate copy of the raw key bytes,
// but its AES key schedule starts with them (AES's first round key is the
// key itself) and GCM's hash key derives from them: Wipe clears both.
type Key struct {
	ID kek.ID
	// KeyID is ID.String(), computed once for the KMS v2 hot path.
	KeyID string
	// Size is the key's length in bytes: 16, 24 or 32 (AES-128/192/256).
	Size  int
	block cipher.Block
	gcm   cipher.AEAD
}

// NewKey sets up the ciphers for k. The caller still owns (and should
// wipe) k.Secret.
func NewKey(k kek.Key) (*Key, error) {
	block, err := aes.NewCipher(k.Secret)
	if err != nil {
		return nil, err
	}
	// The FIPS 140-3 approved GCM (and the only one GODEBUG=fips140=only
	// allows): the module draws the nonce itself, and its output, nonce ‖
	// AES-GCM(p), is exactly what follows the header in the aesgcm format.
	gcm, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, err
	}
	return &Key{ID: k.ID, KeyID: k.ID.String(), Size: len(k.Secret), block: block, gcm: gcm}, nil
}

// Set is an immutable list of keys; the first encrypts, all decrypt.
type Set struct {
	keys []*Key
}

// NewSet returns a Set over keys (primary first). keys must not be empty.
func NewSet(keys []*Key) *Set { return &Set{keys: keys} }

// Primary is the key that encrypts.
func (s *Set) Primary() *Key { return s.keys[0] }

// Keys lists all keys, primary first.
func (s *Set) Keys() []*Key { return s.keys }

// Lookup returns the key named id, or nil.
func (s *Set) Lookup(id kek.ID) *Key {
	for _, k := range s.keys {
		if k.ID == id {
			return k
		}
	}
	return nil
}

// Encrypt seals plaintext under the primary key with mode.
func (s *Set) Encrypt(mode Mode, plaintext []byte) ([]byte, error) {
	if len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, len(plaintext), MaxPlaintext)
	}
	k := s.keys[0]
	switch mode {
	case AESCBC:
		return k.encryptCBC(cbcHeader, k.ID[:], plaintext)
	case Legacy:
		return k.encryptCBC(legacyHeader, nil, plaintext)
	}
	out := make([]byte, headerLen, headerLen+nonceLen+len(plaintext)+gcmOverhead)
	copy(out, gcmHeader)
	copy(out[tagLen:], k.ID[:])
	return k.gcm.Seal(out, nil, plaintext, out[:headerLen]), nil
}

// encryptCBC returns tag ‖ id ‖ IV ‖ AES-CBC(PKCS#7(plaintext)); the 2018
// format has no id.
func (k *Key) encryptCBC(tag string, id, plaintext []byte) ([]byte, error) {
	n := len(tag) + len(id)
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	out := make([]byte, n+aes.BlockSize+len(plaintext)+pad)
	copy(out, tag)
	copy(out[len(tag):], id)
	iv := out[n : n+aes.BlockSize]
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	body := out[n+aes.BlockSize:]
	copy(body, plaintext)
	for i := len(plaintext); i < len(body); i++ {
		body[i] = byte(pad)
	}
	mode := cipher.NewCBCEncrypter(k.block, iv)
	mode.CryptBlocks(body, body)
	zeroPointee(mode)
	return out, nil
}

// Decrypt opens a ciphertext in any supported format and returns the key
// that opened it.
func (s *Set) Decrypt(ciphertext []byte) ([]byte, *Key, error) {
	if len(ciphertext) > MaxCiphertext {
		return nil, nil, fmt.Errorf("%w: %d bytes, max %d", ErrMalformed, len(ciphertext), MaxCiphertext)
	}
	switch {
	case bytes.HasPrefix(ciphertext, []byte(legacyHeader)):
		body := ciphertext[tagLen:]
		if err := checkCBCLen(body); err != nil {
			return nil, nil, err
		}
		return s.decryptLegacy(body)
	case bytes.HasPrefix(ciphertext, []byte(gcmHeader)):
		if len(ciphertext) < headerLen+nonceLen+gcmOverhead {
			return nil, nil, fmt.Errorf("%w: aesgcm ciphertext is %d bytes, min %d", ErrMalformed, len(ciphertext), headerLen+nonceLen+gcmOverhead)
		}
		k, err := s.keyFor(ciphertext)
		if err != nil {
			return nil, nil, err
		}
		body := ciphertext[headerLen:] // nonce ‖ AES-GCM(p)
		p, err := k.gcm.Open(make([]byte, 0, len(body)-nonceLen-gcmOverhead), nil, body, ciphertext[:headerLen])
		if err != nil {
			return nil, nil, ErrDecrypt
		}
		return p, k, nil
	case bytes.HasPrefix(ciphertext, []byte(cbcHeader)):
		if len(ciphertext) < headerLen {
			return nil, nil, fmt.Errorf("%w: aescbc ciphertext is %d bytes, shorter than its header", ErrMalformed, len(ciphertext))
		}
		body := ciphertext[headerLen:]
		if err := checkCBCLen(body); err != nil {
			return nil, nil, err
		}
		k, err := s.keyFor(ciphertext)
		if err != nil {
			return nil, nil, err
		}
		p, ok := k.decryptCBC(body)
		if !ok {
			return nil, nil, ErrDecrypt
		}
		return p, k, nil
	}
	return nil, nil, fmt.Errorf("%w: unknown header (want %q, %q or %q)", ErrMalformed, gcmHeader, cbcHeader, legacyHeader)
}

// decryptLegacy maps a 2018 ciphertext, which names no key, to a key: every
// key is tried and the one whose PKCS#7 padding checks wins. A wrong key
// passes with probability 2^-8 per padding byte it must match, so the key
// that yields the longest valid padding wins, ties going to keyring order.
// For the 32-byte DEKs kube-apiserver stores (16 bytes of padding) a wrong
// match has probability 2^-128.
func (s *Set) decryptLegacy(body []byte) ([]byte, *Key, error) {
	var best []byte
	var bestKey *Key
	bestPad := 0
	for _, k := range s.keys {
		p, ok := k.decryptCBC(body)
		if !ok {
			continue
		}
		if pad := len(body) - aes.BlockSize - len(p); pad > bestPad {
			clear(best)
			best, bestKey, bestPad = p, k, pad
		} else {
			clear(p)
		}
	}
	if bestKey == nil {
		return nil, nil, ErrDecrypt
	}
	return best, bestKey, nil
}

// KeyID returns the key a ciphertext names in its header, without opening
// it; false for a 2018 ciphertext, which names none, or for anything else.
func KeyID(ciphertext []byte) (kek.ID, bool) {
	if len(ciphertext) < headerLen || !(bytes.HasPrefix(ciphertext, []byte(gcmHeader)) || bytes.HasPrefix(ciphertext, []byte(cbcHeader))) {
		return kek.ID{}, false
	}
	return kek.ID(ciphertext[tagLen:headerLen]), true
}

func (s *Set) keyFor(ciphertext []byte) (*Key, error) {
	id := kek.ID(ciphertext[tagLen:headerLen])
	if k := s.Lookup(id); k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("%w: ciphertext was made with key %s, which is not in the keyring", ErrUnknownKey, id)
}

// checkCBCLen rejects bodies that cannot be IV plus whole blocks. Lengths
// are public, so saying why is no oracle.
func checkCBCLen(body []byte) error {
	if len(body) < 2*aes.BlockSize || len(body)%aes.BlockSize != 0 {
		return fmt.Errorf("%w: aescbc body is %d bytes; want a 16-byte IV and at least one whole 16-byte block", ErrMalformed, len(body))
	}
	return nil
}

// decryptCBC returns ok=false for any padding failure, checking all pad
// bytes in constant time so timing does not tell which byte was wrong.
func (k *Key) decryptCBC(body []byte) ([]byte, bool) {
	out := make([]byte, len(body)-aes.BlockSize)
	mode := cipher.NewCBCDecrypter(k.block, body[:aes.BlockSize])
	mode.CryptBlocks(out, body[aes.BlockSize:])
	zeroPointee(mode)
	n := len(out)
	pad := int(out[n-1])
	good := subtle.ConstantTimeLessOrEq(1, pad) & subtle.ConstantTimeLessOrEq(pad, aes.BlockSize)
	for i := 1; i <= aes.BlockSize; i++ {
		inPad := subtle.ConstantTimeLessOrEq(i, pad)
		good &= subtle.ConstantTimeByteEq(out[n-i], byte(pad)) | (1 ^ inPad)
	}
	if good != 1 {
		clear(out)
		return nil, false
	}
	return out[:n-pad], true
}
