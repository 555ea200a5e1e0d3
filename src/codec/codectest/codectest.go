// Package codectest holds an independent oracle for the 2018 ciphertext
// format, written against crypto/aes and crypto/cipher only (not against
// src/codec), with test vectors made by openssl: a third implementation,
// so neither Go side can drift unnoticed. src/codec's tests and the
// end-to-end tests share it.
package codectest

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
)

// LegacyPrefix starts every 2018 ciphertext.
const LegacyPrefix = ":ck:aescbc:v1:"

// LegacyVector is one 2018 ciphertext: LegacyPrefix ‖ IV ‖
// AES-CBC(PKCS#7(Plain)) under the raw KEK. KeyHex, IVHex and BodyHex are
// hex.
type LegacyVector struct{ KeyHex, IVHex, Plain, BodyHex string }

// LegacyVectors were made with `openssl enc -aes-{128,256}-cbc -K .. -iv ..`.
// The second and third share a key.
var LegacyVectors = []LegacyVector{
	{"404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f", "000102030405060708090a0b0c0d0e0f",
		"a 32-byte data encryption key!!!",
		"f7a4c89ebef8c0c98baf8b3e731608b060b06e5ccd3e01db3e7f83eb635642f187662b5342a2491ced366cd05a9fcd8f"},
	{"707172737475767778797a7b7c7d7e7f", "000102030405060708090a0b0c0d0e0f", "hello 2018", "8de8683a2e12cfe4c2156e8b5b648197"},
	{"707172737475767778797a7b7c7d7e7f", "000102030405060708090a0b0c0d0e0f", "", "11557791b7c8fa046346c0601c057d8d"},
}

// Key is the vector's raw KEK.
func (v LegacyVector) Key() []byte { return Unhex(v.KeyHex) }

// IV is the vector's IV.
func (v LegacyVector) IV() []byte { return Unhex(v.IVHex) }

// Ciphertext is the whole stored ciphertext, prefix included.
func (v LegacyVector) Ciphertext() []byte {
	return append(append([]byte(LegacyPrefix), v.IV()...), Unhex(v.BodyHex)...)
}

// LegacyEncrypt is a minimal version of the 2018 daemon's encryption.
func LegacyEncrypt(key, iv, plain []byte) []byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	n := 16 - len(plain)%16
	padded := append(bytes.Clone(plain), bytes.Repeat([]byte{byte(n)}, n)...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(padded, padded)
	return append(append([]byte(LegacyPrefix), iv...), padded...)
}

// LegacyDecrypt is the 2018 daemon's decryption and nothing more: it
// accepts only LegacyPrefix ‖ IV ‖ AES-CBC(PKCS#7(plain)) under key, and
// reports false for anything else, kms's ":ck:v2:" formats included.
func LegacyDecrypt(key, ciphertext []byte) ([]byte, bool) {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	body, ok := bytes.CutPrefix(ciphertext, []byte(LegacyPrefix))
	if !ok || len(body) < 32 || len(body)%16 != 0 {
		return nil, false
	}
	plain := make([]byte, len(body)-16)
	cipher.NewCBCDecrypter(block, body[:16]).CryptBlocks(plain, body[16:])
	n := int(plain[len(plain)-1])
	if n < 1 || n > 16 || !bytes.Equal(plain[len(plain)-n:], bytes.Repeat([]byte{byte(n)}, n)) {
		return nil, false
	}
	return plain[:len(plain)-n], true
}

// Unhex decodes s, which must be hex.
func Unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// Vector is one ciphertext of a current format, ":ck:v2:" ‖ Codec ‖ ":" ‖
// key id ‖ body, made by Python's cryptography package with a fixed nonce
// or IV and its own HMAC for the key id: stored data that every build of
// kms must keep reading, FIPS 140-only mode included, whatever draws its
// nonces. KeyHex, IDHex and BodyHex are hex.
type Vector struct{ Codec, KeyHex, IDHex, Plain, BodyHex string }

// Vectors: aesgcm under AES-256 and (empty plaintext) AES-128, aescbc under
// AES-192. An aesgcm body is nonce(12) ‖ ciphertext ‖ tag(16), with the
// header and key id as additional data; an aescbc one is IV(16) ‖
// AES-CBC(PKCS#7(Plain)).
var Vectors = []Vector{
	{"aesgcm", "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f", "b11ea56329cba566674d3fde85307dfc",
		"a 32-byte data encryption key!!!",
		"101112131415161718191a1b41fdcc2062216bf216784345a0a9804403eea621457c6e7dce1a2d86f5e9a3ca36920edf20f74149dd3db4e374d6871f"},
	{"aesgcm", "808182838485868788898a8b8c8d8e8f", "eed7da8e167d89310cca92eb68f3a864", "",
		"ffeeddccbbaa9988776655446be52518646204daf3c207aa81112ac4"},
	{"aescbc", "505152535455565758595a5b5c5d5e5f6061626364656667", "39513c5d07cb8cb204ae3b6458a7ec63", "hello v2",
		"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf7e445ba12d9bb48ee8583acc698b9662"},
}

// Key is the vector's KEK.
func (v Vector) Key() []byte { return Unhex(v.KeyHex) }

// Ciphertext is the whole stored ciphertext, header included.
func (v Vector) Ciphertext() []byte {
	return append(append([]byte(":ck:v2:"+v.Codec+":"), Unhex(v.IDHex)...), Unhex(v.BodyHex)...)
}

// GCMSeal makes an aesgcm ciphertext the way kms did before FIPS 140-3
// mode: a caller-chosen nonce through cipher.NewGCM, which FIPS 140-only
// mode refuses (run it inside fips140.WithoutEnforcement there).
func GCMSeal(key []byte, id [16]byte, nonce, plain []byte) []byte {
	aead := newGCM(key)
	header := append([]byte(":ck:v2:aesgcm:"), id[:]...)
	return aead.Seal(append(bytes.Clone(header), nonce...), nonce, plain, header)
}

// GCMOpen opens an aesgcm ciphertext as kms did before FIPS 140-3 mode.
func GCMOpen(key, ciphertext []byte) ([]byte, error) {
	const headerLen, nonceLen = 14 + 16, 12
	header, nonce := ciphertext[:headerLen], ciphertext[headerLen:headerLen+nonceLen]
	return newGCM(key).Open(nil, nonce, ciphertext[headerLen+nonceLen:], header)
}

func newGCM(key []byte) cipher.AEAD {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return aead
}
