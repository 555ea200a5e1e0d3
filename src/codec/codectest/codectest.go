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
