package kek

import (
	"bytes"
	"encoding/base64"
	"fmt"
)

// NewKey wraps secret, which must be 16, 24 or 32 bytes. The Key holds
// secret itself, not a copy, so the caller has one buffer to wipe.
func NewKey(secret []byte) (Key, error) {
	if !validSize(len(secret)) {
		return Key{}, fmt.Errorf("key is %d bytes; want 16, 24 or 32", len(secret))
	}
	return Key{ID: deriveID(secret), Secret: secret}, nil
}

// idComment precedes each key that Text writes, so that a person editing
// the file (to retire a key) can tell which line is which key.
const idComment = "# key_id "

// entryLen is the size of one key's lines in the text format.
func entryLen(k Key) int {
	return len(idComment) + len(k.ID.String()) + 1 + base64.StdEncoding.EncodedLen(len(k.Secret)) + 1
}

// appendEntry writes k's lines into dst. Callers size dst with entryLen:
// growing it would leave copies of the key behind that nobody can wipe.
func appendEntry(dst []byte, k Key) []byte {
	dst = append(dst, idComment...)
	dst = append(dst, k.ID.String()...)
	dst = append(dst, '\n')
	n := len(dst)
	dst = dst[:n+base64.StdEncoding.EncodedLen(len(k.Secret))]
	base64.StdEncoding.Encode(dst[n:], k.Secret)
	return append(dst, '\n')
}

// Text encodes r in the text keyring format, primary first, each key after
// a comment naming its id. Parse(r.Text()) gives r back. The result holds
// key material: wipe it when done.
func (r *Keyring) Text() []byte {
	size := len(Header) + 1
	for _, k := range r.Keys {
		size += entryLen(k)
	}
	out := make([]byte, 0, size)
	out = append(out, Header...)
	out = append(out, '\n')
	for _, k := range r.Keys {
		out = appendEntry(out, k)
	}
	return out
}

// AddPrimary returns the contents of a KEK file with k as its new primary
// and every old key kept for decryption. A text keyring keeps all its lines,
// comments included: k's go right after the header. A raw key (the 2018
// format) becomes a text keyring in which it is the second key. The result
// holds key material: wipe it when done.
func AddPrimary(file []byte, k Key) ([]byte, error) {
	old, err := Parse(file)
	if err != nil {
		return nil, err
	}
	defer old.Wipe()
	for _, o := range old.Keys {
		if o.ID == k.ID {
			return nil, fmt.Errorf("the keyring already holds key %s", k.ID)
		}
	}
	if old.Raw {
		r := Keyring{Keys: []Key{k, old.Keys[0]}}
		return r.Text(), nil
	}
	// Parse found keys after the header, so its line ends in '\n'.
	head := bytes.IndexByte(file, '\n') + 1
	out := make([]byte, 0, len(file)+entryLen(k))
	out = append(out, file[:head]...)
	out = appendEntry(out, k)
	return append(out, file[head:]...), nil
}
