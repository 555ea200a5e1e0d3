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
