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

func TestLegacyDecryptMatchesOpenSSL(t *testing.T) {
	for i, v := range LegacyVectors {
		if p, ok := LegacyDecrypt(v.Key(), v.Ciphertext()); !ok || string(p) != v.Plain {
			t.Fatalf("vector %d: the independent decoder disagrees with openssl: %q, %v", i, p, ok)
		}
	}
	// It knows nothing but the 2018 format.
	ct := append([]byte(":ck:v2:aescbc:"), LegacyVectors[1].Ciphertext()[len(LegacyPrefix):]...)
	if _, ok := LegacyDecrypt(LegacyVectors[1].Key(), ct); ok {
		t.Fatal("accepted a :ck:v2: header")
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
