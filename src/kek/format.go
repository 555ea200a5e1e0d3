package kek

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
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
	old, err := parseFor(file, k.ID)
	if err != nil {
		return nil, err
	}
	defer old.Wipe()
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

// The steps of a two-phase rotation, each one edit of a KEK file that
// keeps every other line. Each result holds key material: wipe it when
// done.
//   - AddSecondary puts a new key in for decryption only. Once every
//     daemon holds it, none can meet data it cannot read;
//   - Promote makes it the primary, which encrypts new data;
//   - Retire removes the old key, once no data needs it.

// AddSecondary returns the contents of a KEK file with k added right after
// the primary, for decryption only. A raw key (the 2018 format) becomes a
// text keyring with the raw key still primary.
func AddSecondary(file []byte, k Key) ([]byte, error) {
	old, err := parseFor(file, k.ID)
	if err != nil {
		return nil, err
	}
	defer old.Wipe()
	if old.Raw {
		r := Keyring{Keys: []Key{old.Keys[0], k}}
		return r.Text(), nil
	}
	at := old.entries[0].end
	newline := at > 0 && file[at-1] != '\n' // the primary ends the file without one
	out := make([]byte, 0, len(file)+entryLen(k)+1)
	out = append(out, file[:at]...)
	if newline {
		out = append(out, '\n')
	}
	out = appendEntry(out, k)
	return append(out, file[at:]...), nil
}

// ErrAlreadyPrimary is Promote's answer when the key is the primary.
var ErrAlreadyPrimary = errors.New("the key is already the primary")

// Promote returns the contents of a KEK file whose primary is the key
// named id, moved with its key_id comment to right after the header.
func Promote(file []byte, id ID) ([]byte, error) {
	old, i, err := locate(file, id)
	if err != nil {
		return nil, err
	}
	defer old.Wipe()
	if i == 0 {
		return nil, ErrAlreadyPrimary
	}
	e := old.entries[i]
	head := bytes.IndexByte(file, '\n') + 1
	moved := file[e.start:e.end]
	out := make([]byte, 0, len(file)+1)
	out = append(out, file[:head]...)
	out = append(out, moved...)
	if moved[len(moved)-1] != '\n' {
		out = append(out, '\n')
	}
	out = append(out, file[head:e.start]...)
	return append(out, file[e.end:]...), nil
}

// Retire returns the contents of a KEK file without the key named id and
// its key_id comment. The primary cannot be retired: promote another first.
func Retire(file []byte, id ID) ([]byte, error) {
	old, i, err := locate(file, id)
	if err != nil {
		return nil, err
	}
	defer old.Wipe()
	if i == 0 {
		return nil, fmt.Errorf("%s is the primary: promote another key first", id)
	}
	e := old.entries[i]
	out := make([]byte, 0, len(file)-(e.end-e.start))
	out = append(out, file[:e.start]...)
	return append(out, file[e.end:]...), nil
}

// parseFor parses a KEK file that a new key named id is to join.
func parseFor(file []byte, id ID) (*Keyring, error) {
	old, err := Parse(file)
	if err != nil {
		return nil, err
	}
	for _, o := range old.Keys {
		if o.ID == id {
			old.Wipe()
			return nil, fmt.Errorf("the keyring already holds key %s", id)
		}
	}
	return old, nil
}

// locate parses a KEK file and finds the key named id in it.
func locate(file []byte, id ID) (*Keyring, int, error) {
	old, err := Parse(file)
	if err != nil {
		return nil, 0, err
	}
	for i, k := range old.Keys {
		if k.ID == id {
			if old.Raw {
				// A raw file holds just its primary; nothing to move or remove.
				return old, 0, nil
			}
			return old, i, nil
		}
	}
	old.Wipe()
	return nil, 0, fmt.Errorf("the keyring holds no key %s", id)
}

// ParseID reads a key_id ("kek1-" and 32 hex digits).
func ParseID(s string) (ID, error) {
	var id ID
	h, ok := strings.CutPrefix(s, idPrefix)
	if !ok || len(h) != 2*IDSize {
		return id, fmt.Errorf("key_id %q: want %s and %d hex digits", s, idPrefix, 2*IDSize)
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return id, fmt.Errorf("key_id %q: %v", s, err)
	}
	return id, nil
}
