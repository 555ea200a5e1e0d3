package codec

import (
	"bytes"

	"github.com/cmdkms/kms/src/kek"
)

// NamedKey returns the id of the key a ciphertext's header names, without
// decrypting it: for the audit log of KMS v1, whose messages carry no key
// id. ok is false for the 2018 format, which names no key, and for input
// that is no ciphertext.
func NamedKey(ciphertext []byte) (id kek.ID, ok bool) {
	if len(ciphertext) < headerLen ||
		!bytes.HasPrefix(ciphertext, []byte(gcmHeader)) && !bytes.HasPrefix(ciphertext, []byte(cbcHeader)) {
		return id, false
	}
	return kek.ID(ciphertext[tagLen:headerLen]), true
}
