package kek

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func seq(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func TestRawSizes(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		out := seq(n, 1)
		r, err := Parse(out)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !r.Raw || len(r.Keys) != 1 || !bytes.Equal(r.Keys[0].Secret, out) {
			t.Fatalf("%d bytes: got %+v", n, r)
		}
		out[0] ^= 0xff // Parse must not alias the caller's buffer.
		if bytes.Equal(r.Keys[0].Secret, out) {
			t.Fatal("keyring aliases the command output")
		}
	}
}

func TestRawKeyEndingInNewlineIsKeptExactly(t *testing.T) {
	out := append(seq(15, 'a'), '\n')
	r, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Keys[0].Secret, out) {
		t.Fatal("raw key was altered")
	}
}

func TestWrongSizesNameTheSize(t *testing.T) {
	for _, tc := range []struct {
		out  []byte
		want string
	}{
		{nil, "0 bytes"},
		{seq(15, 1), "15 bytes"},
		{seq(31, 1), "31 bytes"},
		{append(seq(32, 1), '\n'), "33 bytes: 32 bytes and a trailing newline"},
		{append(seq(16, 1), '\n'), "17 bytes: 16 bytes and a trailing newline"},
		{seq(64, 1), "64 bytes"},
	} {
		_, err := Parse(tc.out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("len %d: err %v, want it to contain %q", len(tc.out), err, tc.want)
		}
	}
}

func TestTextKeyring(t *testing.T) {
	k1, k2, k3 := seq(32, 1), seq(16, 100), seq(24, 200)
	text := Header + "\n# rotated 2024-05-01\n" +
		base64.StdEncoding.EncodeToString(k1) + "\n\n" +
		"  " + base64.StdEncoding.EncodeToString(k2) + "\r\n" +
		base64.StdEncoding.EncodeToString(k3) // no final newline
	r, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if r.Raw || len(r.Keys) != 3 {
		t.Fatalf("got %d keys, raw=%v", len(r.Keys), r.Raw)
	}
	for i, want := range [][]byte{k1, k2, k3} {
		if !bytes.Equal(r.Keys[i].Secret, want) {
			t.Errorf("key %d differs", i)
		}
	}
	// A final newline must not change anything.
	r2, err := Parse([]byte(text + "\n"))
	if err != nil || r2.Keys[2].ID != r.Keys[2].ID {
		t.Fatalf("final newline changed the keyring: %v", err)
	}
}

func TestTextErrorsNameLineAndSize(t *testing.T) {
	good := base64.StdEncoding.EncodeToString(seq(32, 1))
	for _, tc := range []struct{ text, want string }{
		{Header + "\n", "no keys"},
		{Header + "\n# only a comment\n\n", "no keys"},
		{Header, "no keys"},
		{Header + "\n" + good + "\n" + base64.StdEncoding.EncodeToString(seq(20, 1)) + "\n", "line 3: key is 20 bytes"},
		{Header + "\n\n" + "not base64!\n", "line 3: not standard base64"},
		{Header + "\n" + good + "\n" + good + "\n", "line 3: duplicate key"},
		// Not the header (a version we do not know): treated as raw output.
		{"kms-keyring v2\n" + good, "bytes; want exactly 16, 24 or 32"},
	} {
		_, err := Parse([]byte(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want it to contain %q", tc.text, err, tc.want)
		}
	}
}

func TestErrorsDoNotLeakKeyBytes(t *testing.T) {
	secret := "c2VjcmV0c2VjcmV0c2VjcmV0" // 18 bytes of "secret..."
	_, err := Parse([]byte(Header + "\n" + secret + "\n"))
	if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "secret") {
		t.Fatalf("error %v leaks key material", err)
	}
}

func TestIDs(t *testing.T) {
	a, _ := Parse(seq(32, 1))
	a2, _ := Parse(seq(32, 1))
	b, _ := Parse(seq(32, 2))
	if a.Keys[0].ID != a2.Keys[0].ID {
		t.Fatal("id is not stable")
	}
	if a.Keys[0].ID == b.Keys[0].ID {
		t.Fatal("different keys share an id")
	}
	// Pinned: the id must survive refactors, or data written under it
	// would name a key that no longer exists.
	const want = "kek1-" // + 32 hex digits
	s := a.Keys[0].ID.String()
	if !strings.HasPrefix(s, want) || len(s) != len(want)+32 {
		t.Fatalf("id %q has the wrong shape", s)
	}
	if s != "kek1-"+pinnedID {
		t.Fatalf("id of 01..20 is %q, pinned %q", s, pinnedID)
	}
	if strings.Contains(s, base64.StdEncoding.EncodeToString(seq(32, 1))[:8]) {
		t.Fatal("id reveals the key")
	}
}

func TestWipe(t *testing.T) {
	r, err := Parse([]byte(Header + "\n" + base64.StdEncoding.EncodeToString(seq(32, 1)) + "\n" +
		base64.StdEncoding.EncodeToString(seq(16, 50)) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	r.Wipe()
	for i, k := range r.Keys {
		if !bytes.Equal(k.Secret, make([]byte, len(k.Secret))) {
			t.Errorf("key %d not wiped", i)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(seq(16, 0))
	f.Add(seq(24, 0))
	f.Add(seq(32, 0))
	f.Add(append(seq(32, 0), '\n'))
	f.Add([]byte(Header + "\n" + base64.StdEncoding.EncodeToString(seq(32, 1)) + "\n# c\n\n" +
		base64.StdEncoding.EncodeToString(seq(16, 9)) + "\n"))
	f.Add([]byte(Header + "\r\n===\n"))
	f.Add([]byte(Header))
	f.Fuzz(func(t *testing.T, out []byte) {
		r, err := Parse(out)
		if err != nil {
			if r != nil {
				t.Fatal("keyring returned with an error")
			}
			return
		}
		if len(r.Keys) == 0 {
			t.Fatal("no keys and no error")
		}
		seen := map[ID]bool{}
		for _, k := range r.Keys {
			if !validSize(len(k.Secret)) || k.ID != deriveID(k.Secret) || seen[k.ID] {
				t.Fatalf("bad key: %d bytes", len(k.Secret))
			}
			seen[k.ID] = true
		}
		if r.Raw && !bytes.Equal(r.Keys[0].Secret, out) {
			t.Fatal("raw key altered")
		}
	})
}

// pinnedID is HMAC-SHA256(01 02 .. 20, "cmdkms key id v1")[:16], computed
// outside Go (python3 hmac) so the test does not just re-run deriveID.
const pinnedID = "e1f750359f02d7971c9b2d132589b702"
