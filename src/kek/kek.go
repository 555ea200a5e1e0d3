// Package kek parses what the KEK command prints into a Keyring and derives
// the public key ids that name each key in ciphertexts and in KMS v2.
//
// Two output formats are accepted (see docs/kek.md):
//
//   - raw: exactly 16, 24 or 32 bytes, used as-is (the 2018 format);
//   - text: a first line "kms-keyring v1", then one standard-base64 key of
//     16, 24 or 32 bytes per line; the first key is the primary.
package kek

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// Header is the first line of the text keyring format.
const Header = "kms-keyring v1"

// IDSize is the length of a binary key id.
const IDSize = 16

// ID names a key without revealing it: the first 16 bytes of
// HMAC-SHA256(key, idLabel). HMAC is a PRF, so the id says nothing about the
// key, yet it is the same on every restart and changes with the key.
type ID [IDSize]byte

// idLabel is versioned so a future derivation cannot collide with this one.
const idLabel = "cmdkms key id v1"

// idPrefix marks the string form; it carries the derivation version too.
const idPrefix = "kek1-"

// String is the key_id reported to kube-apiserver: 37 ASCII bytes.
func (id ID) String() string { return idPrefix + hex.EncodeToString(id[:]) }

// idBufSize is a variable, not a constant, so that deriveID's buffer, of
// a size known only at run time (and over 32 bytes), is on the heap: a
// copy on the stack could be left behind when the stack grows.
var idBufSize = sha256.BlockSize + max(len(idLabel), sha256.Size)

// deriveID computes HMAC-SHA256(secret, idLabel) as RFC 2104 spells it
// out, rather than with crypto/hmac: hmac keeps the key XOR ipad and opad
// blocks (the key, trivially) in its state, beyond our reach, and they
// outlived every key in the daemon's memory. Here they live only in buf,
// which is wiped. Keys are 16 to 32 bytes, shorter than SHA-256's block,
// so HMAC's hashing of long keys never applies.
func deriveID(secret []byte) ID {
	const block = sha256.BlockSize
	buf := make([]byte, idBufSize)
	defer clear(buf)
	pad := func(b byte) {
		clear(buf[:block])
		copy(buf, secret)
		for i := range block {
			buf[i] ^= b
		}
	}
	pad(0x36)
	copy(buf[block:], idLabel)
	inner := sha256.Sum256(buf[:block+len(idLabel)])
	pad(0x5c)
	copy(buf[block:], inner[:])
	clear(inner[:])
	sum := sha256.Sum256(buf[:block+sha256.Size])
	var id ID
	copy(id[:], sum[:])
	return id
}

// Key is one key encryption key.
type Key struct {
	ID ID
	// Secret is the key itself; Keyring.Wipe zeroes it.
	Secret []byte
}

// Keyring is a parsed command output. Keys[0] is the primary.
type Keyring struct {
	Keys []Key
	// Raw is true for the 2018 raw format.
	Raw bool
	// entries locate each key's lines in the text that Parse read, so that
	// a file can be edited (format.go) keeping every other line.
	entries []entry
}

// entry is where one key is in a text keyring: [start, end) covers its
// line, its newline, and the "# key_id" comment right above it if that
// names it.
type entry struct{ start, end int }

// Wipe zeroes every key's bytes. The Keyring is unusable afterwards.
func (r *Keyring) Wipe() {
	for i := range r.Keys {
		clear(r.Keys[i].Secret)
	}
}

func validSize(n int) bool { return n == 16 || n == 24 || n == 32 }

// Parse reads command output. It never keeps a reference to out, so the
// caller can wipe out as soon as Parse returns. Errors never contain key bytes.
func Parse(out []byte) (*Keyring, error) {
	if isText(out) {
		return parseText(out)
	}
	if validSize(len(out)) {
		// Used exactly as printed, as the 2018 daemon did: a raw key that
		// happens to end in 0x0a is still a valid key, so nothing is trimmed.
		secret := bytes.Clone(out)
		return &Keyring{Keys: []Key{{ID: deriveID(secret), Secret: secret}}, Raw: true}, nil
	}
	if n := len(out); n > 0 && out[n-1] == '\n' && validSize(n-1) {
		return nil, fmt.Errorf("KEK output is %d bytes: %d bytes and a trailing newline? "+
			"Raw keys must be printed exactly, without a newline (or use the %q text format)", n, n-1, Header)
	}
	return nil, fmt.Errorf("KEK output is %d bytes; want exactly 16, 24 or 32 raw bytes, "+
		"or a text keyring whose first line is %q", len(out), Header)
}

func isText(out []byte) bool {
	rest, ok := bytes.CutPrefix(out, []byte(Header))
	return ok && (len(rest) == 0 || rest[0] == '\n' || rest[0] == '\r')
}

func parseText(out []byte) (*Keyring, error) {
	r := &Keyring{}
	// A decode error must not leave earlier keys unwiped.
	fail := func(err error) (*Keyring, error) {
		r.Wipe()
		return nil, err
	}
	lines := bytes.Split(out, []byte("\n"))
	start := len(lines[0]) + 1 // of the line at hand
	for i, raw := range lines[1:] {
		lineNo, lineStart := i+2, start
		start += len(raw) + 1
		line := bytes.TrimSpace(raw)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		secret := make([]byte, base64.StdEncoding.DecodedLen(len(line)))
		n, err := base64.StdEncoding.Decode(secret, line)
		if err != nil {
			clear(secret)
			return fail(fmt.Errorf("keyring line %d: not standard base64 (%d characters)", lineNo, len(line)))
		}
		secret = secret[:n]
		if !validSize(n) {
			clear(secret)
			return fail(fmt.Errorf("keyring line %d: key is %d bytes; want 16, 24 or 32", lineNo, n))
		}
		id := deriveID(secret)
		for _, k := range r.Keys {
			if k.ID == id {
				clear(secret)
				return fail(fmt.Errorf("keyring line %d: duplicate key (%s)", lineNo, id))
			}
		}
		r.Keys = append(r.Keys, Key{ID: id, Secret: secret})
		e := entry{lineStart, min(start, len(out))}
		if prev := lines[i]; i > 0 && string(bytes.TrimSpace(prev)) == idComment+id.String() {
			e.start -= len(prev) + 1
		}
		r.entries = append(r.entries, e)
	}
	if len(r.Keys) == 0 {
		return nil, fmt.Errorf("keyring has no keys after the %q line", Header)
	}
	return r, nil
}
