package testbin

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"testing"
)

// NewKey returns a random 32-byte KEK secret.
func NewKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// WriteKeyring writes a text keyring (docs/kek.md) of keys, keys[0]
// primary, to path. It is written by hand rather than by src/kek, so tests
// check the daemon against the format itself. The file is replaced
// atomically: a concurrent `cat` sees the old or the new one, never half.
func WriteKeyring(t testing.TB, path string, keys ...[]byte) {
	t.Helper()
	text := "kms-keyring v1\n"
	for _, k := range keys {
		text += base64.StdEncoding.EncodeToString(k) + "\n"
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
