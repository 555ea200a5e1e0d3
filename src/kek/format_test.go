package kek

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

func mustKey(t *testing.T, secret []byte) Key {
	t.Helper()
	k, err := NewKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewKeySizes(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		k := mustKey(t, seq(n, 1))
		if k.ID != deriveID(seq(n, 1)) {
			t.Fatalf("%d bytes: id %s", n, k.ID)
		}
	}
	for _, n := range []int{0, 15, 31, 33, 64} {
		_, err := NewKey(seq(n, 1))
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("is %d bytes", n)) {
			t.Fatalf("%d bytes: %v", n, err)
		}
	}
}

func TestTextRoundTrip(t *testing.T) {
	r := &Keyring{Keys: []Key{mustKey(t, seq(32, 1)), mustKey(t, seq(16, 100)), mustKey(t, seq(24, 200))}}
	text := r.Text()
	if len(text) != cap(text) {
		t.Fatalf("Text grew its buffer: len %d cap %d (copies of the keys are left behind)", len(text), cap(text))
	}
	if !strings.HasPrefix(string(text), Header+"\n# key_id "+r.Keys[0].ID.String()+"\n") {
		t.Fatalf("text:\n%s", text)
	}
	got, err := Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	if got.Raw || len(got.Keys) != 3 {
		t.Fatalf("got raw=%v, %d keys", got.Raw, len(got.Keys))
	}
	for i, k := range r.Keys {
		if got.Keys[i].ID != k.ID || !bytes.Equal(got.Keys[i].Secret, k.Secret) {
			t.Fatalf("key %d differs", i)
		}
	}
}

func TestAddPrimaryKeepsLinesAndOrder(t *testing.T) {
	old1, old2 := mustKey(t, seq(32, 1)), mustKey(t, seq(32, 50))
	file := []byte(Header + "\r\n# written by hand\n" +
		string((&Keyring{Keys: []Key{old1, old2}}).Text()[len(Header)+1:]) + "# trailing note\n")
	k := mustKey(t, seq(16, 9))
	out, err := AddPrimary(file, k)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != cap(out) {
		t.Fatalf("AddPrimary grew its buffer: len %d cap %d", len(out), cap(out))
	}
	for _, line := range []string{"# written by hand\n", "# trailing note\n", "# key_id " + old2.ID.String() + "\n"} {
		if !strings.Contains(string(out), line) {
			t.Fatalf("lost %q:\n%s", line, out)
		}
	}
	r, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Keys) != 3 || [3]ID{r.Keys[0].ID, r.Keys[1].ID, r.Keys[2].ID} != [3]ID{k.ID, old1.ID, old2.ID} {
		t.Fatalf("want the new key, then the old ones in order; got %d keys, primary %s", len(r.Keys), r.Keys[0].ID)
	}
}

func TestAddPrimaryToRawKey(t *testing.T) {
	raw := seq(32, 7)
	k := mustKey(t, seq(32, 70))
	out, err := AddPrimary(raw, k)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Raw || len(r.Keys) != 2 || r.Keys[0].ID != k.ID || !bytes.Equal(r.Keys[1].Secret, raw) {
		t.Fatalf("want the new key, then the raw one; got raw=%v, %d keys", r.Raw, len(r.Keys))
	}
}

func TestAddPrimaryRefuses(t *testing.T) {
	k := mustKey(t, seq(32, 1))
	if _, err := AddPrimary((&Keyring{Keys: []Key{k}}).Text(), k); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := AddPrimary([]byte("not a key\n"), k); err == nil || !strings.Contains(err.Error(), "is 10 bytes") {
		t.Fatalf("garbage: %v", err)
	}
}

// The two-phase rotation, step by step, on a file with hand-written lines:
// each step changes only the lines of the key it acts on.
func TestTwoPhaseRotation(t *testing.T) {
	a, b := mustKey(t, seq(32, 1)), mustKey(t, seq(32, 60))
	file := []byte(Header + "\n# site notes\n" + string((&Keyring{Keys: []Key{a}}).Text()[len(Header)+1:]) + "# end\n")
	ids := func(out []byte) []ID {
		t.Helper()
		r, err := Parse(out)
		if err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		defer r.Wipe()
		var got []ID
		for _, k := range r.Keys {
			got = append(got, k.ID)
		}
		return got
	}
	exact := func(out []byte) {
		t.Helper()
		if cap(out)-len(out) > 1 {
			t.Fatalf("buffer of %d for %d bytes", cap(out), len(out))
		}
	}

	added, err := AddSecondary(file, b)
	if err != nil {
		t.Fatal(err)
	}
	exact(added)
	if got := ids(added); len(got) != 2 || got[0] != a.ID || got[1] != b.ID {
		t.Fatalf("after AddSecondary: %v", got)
	}
	want := Header + "\n# site notes\n# key_id " + a.ID.String() + "\n" + base64.StdEncoding.EncodeToString(a.Secret) +
		"\n# key_id " + b.ID.String() + "\n" + base64.StdEncoding.EncodeToString(b.Secret) + "\n# end\n"
	if string(added) != want {
		t.Fatalf("after AddSecondary:\n%s\nwant:\n%s", added, want)
	}

	promoted, err := Promote(added, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	exact(promoted)
	want = Header + "\n# key_id " + b.ID.String() + "\n" + base64.StdEncoding.EncodeToString(b.Secret) +
		"\n# site notes\n# key_id " + a.ID.String() + "\n" + base64.StdEncoding.EncodeToString(a.Secret) + "\n# end\n"
	if string(promoted) != want {
		t.Fatalf("after Promote:\n%s\nwant:\n%s", promoted, want)
	}
	if _, err := Promote(promoted, b.ID); err != ErrAlreadyPrimary {
		t.Fatalf("promoting the primary: %v", err)
	}

	retired, err := Retire(promoted, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	exact(retired)
	want = Header + "\n# key_id " + b.ID.String() + "\n" + base64.StdEncoding.EncodeToString(b.Secret) + "\n# site notes\n# end\n"
	if string(retired) != want {
		t.Fatalf("after Retire:\n%s\nwant:\n%s", retired, want)
	}

	for name, err := range map[string]error{
		"retire the primary":     second(Retire(retired, b.ID)),
		"retire an unknown key":  second(Retire(retired, a.ID)),
		"promote an unknown key": second(Promote(retired, a.ID)),
		"add a key it holds":     second(AddSecondary(retired, b)),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func second(_ []byte, err error) error { return err }

// Keyrings written by hand may end without a newline, or be raw keys.
func TestAddSecondaryToOddFiles(t *testing.T) {
	a, b := mustKey(t, seq(16, 1)), mustKey(t, seq(16, 60))
	noNewline := []byte(Header + "\n" + base64.StdEncoding.EncodeToString(a.Secret))
	for name, file := range map[string][]byte{"no final newline": noNewline, "raw": bytes.Clone(a.Secret)} {
		out, err := AddSecondary(file, b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r, err := Parse(out)
		if err != nil || r.Raw || len(r.Keys) != 2 || r.Keys[0].ID != a.ID || r.Keys[1].ID != b.ID {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
	}
}

func TestParseID(t *testing.T) {
	k := mustKey(t, seq(32, 9))
	if id, err := ParseID(k.ID.String()); err != nil || id != k.ID {
		t.Fatalf("ParseID(%s) = %s, %v", k.ID, id, err)
	}
	for _, bad := range []string{"", "kek1-", "kek2-" + strings.Repeat("0", 32), "kek1-" + strings.Repeat("g", 32), "kek1-" + strings.Repeat("0", 31)} {
		if _, err := ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) accepted", bad)
		}
	}
}
