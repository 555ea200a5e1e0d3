package codectest

import (
	"bytes"
	"testing"
)

func TestLegacyEncryptMatchesOpenSSL(t *testing.T) {
	for i, v := range LegacyVectors {
		if !bytes.Equal(LegacyEncrypt(v.Key(), v.IV(), []byte(v.Plain)), v.Ciphertext()) {
			t.Fatalf("vector %d: the independent encoder disagrees with openssl", i)
		}
	}
}

func TestGCMSealMatchesPython(t *testing.T) {
	for i, v := range Vectors {
		if v.Codec != "aesgcm" {
			continue
		}
		ct := v.Ciphertext()
		nonce := Unhex(v.BodyHex)[:12]
		if !bytes.Equal(GCMSeal(v.Key(), [16]byte(Unhex(v.IDHex)), nonce, []byte(v.Plain)), ct) {
			t.Fatalf("vector %d: the independent encoder disagrees with Python's cryptography", i)
		}
		if p, err := GCMOpen(v.Key(), ct); err != nil || string(p) != v.Plain {
			t.Fatalf("vector %d: the independent decoder: %q, %v", i, p, err)
		}
	}
}
