package main

import (
	"bytes"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/helpers/helpertest"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// kekGen runs the real binary and returns stdout, stderr and the exit code.
func kekGen(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return testbin.Run(t, helpertest.KekGen(t), args...)
}

func mustGen(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := kekGen(t, args...)
	if code != 0 {
		t.Fatalf("kek-gen %v: exit %d\n%s", args, code, errOut)
	}
	return out
}

func parseFile(t *testing.T, path string) (*kek.Keyring, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := kek.Parse(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return r, b
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

// noSecretIn fails if any key of r shows up in s, raw or in base64.
func noSecretIn(t *testing.T, s string, r *kek.Keyring) {
	t.Helper()
	for _, k := range r.Keys {
		if strings.Contains(s, string(k.Secret)) || strings.Contains(s, base64.StdEncoding.EncodeToString(k.Secret)) {
			t.Fatalf("key material in output:\n%s", s)
		}
	}
}

func TestHelp(t *testing.T) {
	out, _, code := kekGen(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"Usage:", "--size", "--raw", "--force", "--add", "--add-secondary", "--promote", "--retire", "0600"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q:\n%s", want, out)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kek")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "exactly one FILE"},
		{[]string{f, f}, "exactly one FILE"},
		{[]string{"--size", "20", f}, "--size 20"},
		{[]string{"--add", "--raw", f}, "only go with a new file"},
		{[]string{"--add", "--add-secondary", f}, "separate steps"},
		{[]string{"--promote", "kek1-00", f}, `key_id "kek1-00"`},
		{[]string{"--retire", "x", "--force", f}, "only go with a new file"},
		{[]string{"--bogus", f}, "unknown flag"},
	} {
		_, errOut, code := kekGen(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
	if _, err := os.Stat(f); !os.IsNotExist(err) {
		t.Fatal("a usage error wrote the file")
	}
}

func TestNewFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "kek")
	out := mustGen(t, f)
	r, b := parseFile(t, f)
	if r.Raw || len(r.Keys) != 1 || len(r.Keys[0].Secret) != 32 {
		t.Fatalf("want a keyring with one 32-byte key; raw=%v keys=%d", r.Raw, len(r.Keys))
	}
	if m := mode(t, f); m != 0o600 {
		t.Fatalf("mode %v, want 0600", m)
	}
	if !strings.Contains(out, "primary key_id "+r.Keys[0].ID.String()) {
		t.Fatalf("stdout does not name the key id:\n%s", out)
	}
	noSecretIn(t, out, r)

	// No clobbering without --force, and the old file is untouched.
	_, errOut, code := kekGen(t, f)
	if code != 1 || !strings.Contains(errOut, "exists") {
		t.Fatalf("second run: exit %d, %q", code, errOut)
	}
	if _, b2 := parseFile(t, f); !bytes.Equal(b, b2) {
		t.Fatal("a refused run changed the file")
	}
	mustGen(t, "--force", f)
	if r2, _ := parseFile(t, f); r2.Keys[0].ID == r.Keys[0].ID {
		t.Fatal("--force kept the old key")
	}
	assertNoTempFiles(t, dir, ".kek.lock", "kek")
}

func TestRawSizes(t *testing.T) {
	dir := t.TempDir()
	seen := map[kek.ID]bool{}
	for _, size := range []string{"16", "24", "32"} {
		f := filepath.Join(dir, "raw"+size)
		mustGen(t, "--raw", "--size", size, f)
		r, b := parseFile(t, f)
		if !r.Raw || strconv.Itoa(len(b)) != size {
			t.Fatalf("--size %s --raw: raw=%v, %d bytes", size, r.Raw, len(b))
		}
		if seen[r.Keys[0].ID] {
			t.Fatal("the same key twice: the generator is not random")
		}
		seen[r.Keys[0].ID] = true
	}
}

func TestAddRotates(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kek")
	mustGen(t, f)
	first, _ := parseFile(t, f)
	// A note added by hand must survive rotation.
	b, _ := os.ReadFile(f)
	b = append(b, "# retire after 2030-01-01\n"...)
	if err := os.WriteFile(f, b, 0o640); err != nil {
		t.Fatal(err)
	}
	out := mustGen(t, "--add", "--size", "16", f)
	mustGen(t, "--add", f)
	r, b := parseFile(t, f)
	if len(r.Keys) != 3 || r.Keys[2].ID != first.Keys[0].ID || !bytes.Equal(r.Keys[2].Secret, first.Keys[0].Secret) {
		t.Fatalf("want 2 new keys before the original; got %d keys", len(r.Keys))
	}
	if len(r.Keys[1].Secret) != 16 {
		t.Fatalf("--add --size 16 made a %d-byte key", len(r.Keys[1].Secret))
	}
	if !strings.Contains(out, "2 key(s), primary key_id "+r.Keys[1].ID.String()) {
		t.Fatalf("stdout: %s", out)
	}
	if !strings.Contains(string(b), "# retire after 2030-01-01\n") {
		t.Fatalf("the comment was lost:\n%s", b)
	}
	if m := mode(t, f); m != 0o600 {
		t.Fatalf("mode after --add %v, want 0600", m)
	}
	noSecretIn(t, out, r)
}

func TestAddConvertsRawKey(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kek")
	mustGen(t, "--raw", f)
	raw, _ := parseFile(t, f)
	mustGen(t, "--add", f)
	r, _ := parseFile(t, f)
	if r.Raw || len(r.Keys) != 2 || !bytes.Equal(r.Keys[1].Secret, raw.Keys[0].Secret) {
		t.Fatalf("want a keyring with the raw key second; raw=%v keys=%d", r.Raw, len(r.Keys))
	}
}

func TestAddFailures(t *testing.T) {
	dir := t.TempDir()
	if _, errOut, code := kekGen(t, "--add", filepath.Join(dir, "missing")); code != 1 || !strings.Contains(errOut, "no such file") {
		t.Fatalf("missing file: exit %d, %q", code, errOut)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("kms-keyring v1\nnot base64!\n"), 0o600)
	if _, errOut, code := kekGen(t, "--add", bad); code != 1 || !strings.Contains(errOut, "line 2") {
		t.Fatalf("bad keyring: exit %d, %q", code, errOut)
	}
	if b, _ := os.ReadFile(bad); string(b) != "kms-keyring v1\nnot base64!\n" {
		t.Fatal("a refused --add changed the file")
	}
	assertNoTempFiles(t, dir, ".bad.lock", "bad")
}

// A Secret mounted by Kubernetes is a symlink chain; rotating through the
// link must update the file it points to and leave the link in place.
func TestAddThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	target, link := filepath.Join(dir, "real"), filepath.Join(dir, "link")
	mustGen(t, target)
	if err := os.Symlink("real", link); err != nil {
		t.Fatal(err)
	}
	mustGen(t, "--add", link)
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Fatalf("the link was replaced: %v %v", fi, err)
	}
	if r, _ := parseFile(t, target); len(r.Keys) != 2 {
		t.Fatalf("target has %d keys, want 2", len(r.Keys))
	}
}

// The file a daemon reads is always whole: readers racing many rotations
// must always parse it.
func TestAddIsAtomic(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kek")
	mustGen(t, f)
	var stop atomic.Bool
	var reads atomic.Int64
	errs := make(chan error, 1)
	go func() {
		defer close(errs)
		for !stop.Load() {
			b, err := os.ReadFile(f)
			if err == nil {
				_, err = kek.Parse(b)
			}
			if err != nil {
				errs <- err
				return
			}
			reads.Add(1)
		}
	}()
	const rotations = 15
	for range rotations {
		mustGen(t, "--add", f)
	}
	stop.Store(true)
	if err := <-errs; err != nil {
		t.Fatalf("a reader saw a partial file: %v", err)
	}
	if r, _ := parseFile(t, f); len(r.Keys) != rotations+1 {
		t.Fatalf("%d keys, want %d", len(r.Keys), rotations+1)
	}
	t.Logf("%d concurrent reads", reads.Load())
}

func TestAddKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the file another owner")
	}
	f := filepath.Join(t.TempDir(), "kek")
	mustGen(t, f)
	if err := os.Chown(f, 4321, 4322); err != nil {
		t.Fatal(err)
	}
	mustGen(t, "--add", f)
	st, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Sys().(*syscall.Stat_t); s.Uid != 4321 || s.Gid != 4322 {
		t.Fatalf("owner %d:%d, want 4321:4322", s.Uid, s.Gid)
	}
}

func assertNoTempFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s holds %v, want %v (temp files left behind?)", dir, got, want)
	}
}

// The two phases of a rotation on a file that every node's daemon reads:
// a key added for decryption only, then promoted, then the old one retired.
func TestTwoPhaseRotation(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kek")
	mustGen(t, f)
	first, _ := parseFile(t, f)
	old := first.Keys[0].ID.String()

	out := mustGen(t, "--add-secondary", f)
	r, _ := parseFile(t, f)
	if len(r.Keys) != 2 || r.Keys[0].ID.String() != old {
		t.Fatalf("--add-secondary changed the primary or added no key: %d keys", len(r.Keys))
	}
	added := r.Keys[1].ID.String()
	if !strings.Contains(out, "added key_id "+added+" (decrypt only)") || !strings.Contains(out, "primary key_id "+old) {
		t.Fatalf("stdout: %s", out)
	}
	noSecretIn(t, out, r)

	out = mustGen(t, "--promote", added, f)
	if r, _ = parseFile(t, f); r.Keys[0].ID.String() != added || r.Keys[1].ID.String() != old {
		t.Fatalf("--promote: keys %v", r.Keys)
	}
	if !strings.Contains(out, "promoted key_id "+added) {
		t.Fatalf("stdout: %s", out)
	}
	if out = mustGen(t, "--promote", added, f); !strings.Contains(out, "already the primary; nothing changed") {
		t.Fatalf("promoting twice: %s", out)
	}

	if _, errOut, code := kekGen(t, "--retire", added, f); code != 1 || !strings.Contains(errOut, "is the primary: promote another key first") {
		t.Fatalf("retiring the primary: exit %d, %q", code, errOut)
	}
	out = mustGen(t, "--retire", old, f)
	if r, _ = parseFile(t, f); len(r.Keys) != 1 || r.Keys[0].ID.String() != added {
		t.Fatalf("--retire: %d keys", len(r.Keys))
	}
	if !strings.Contains(out, "retired key_id "+old) {
		t.Fatalf("stdout: %s", out)
	}
	if _, errOut, code := kekGen(t, "--retire", old, f); code != 1 || !strings.Contains(errOut, "holds no key "+old) {
		t.Fatalf("retiring twice: exit %d, %q", code, errOut)
	}
	if m := mode(t, f); m != 0o600 {
		t.Fatalf("mode %v, want 0600", m)
	}
}

// genAtOnce starts one kek-gen process per argument list, all before any
// is waited for, and fails the test unless each exits 0.
func genAtOnce(t *testing.T, argss ...[]string) {
	t.Helper()
	bin := helpertest.KekGen(t)
	cmds := make([]*exec.Cmd, len(argss))
	outs := make([]bytes.Buffer, len(argss))
	for i, args := range argss {
		cmds[i] = exec.Command(bin, args...)
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Errorf("kek-gen %v: %v\n%s", argss[i], err, outs[i].String())
		}
	}
}

func ids(r *kek.Keyring) []string {
	var s []string
	for _, k := range r.Keys {
		s = append(s, k.ID.String())
	}
	return s
}

// Edits at once, from separate processes, are applied one after the
// other: none is lost (issue 18: 20 at once used to leave about 9 keys).
func TestConcurrentEditsAreSerialized(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kek")
	mustGen(t, f)
	var adds [][]string
	for range 20 {
		adds = append(adds, []string{"--add-secondary", f})
	}
	genAtOnce(t, adds...)
	r, _ := parseFile(t, f)
	if len(r.Keys) != 21 {
		t.Fatalf("20 concurrent --add-secondary left %d keys, want 21", len(r.Keys))
	}

}

// Retires, adds and a promotion at once: they commute, so only one outcome
// is right.
func TestConcurrentRetirePromoteAdd(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kek")
	mustGen(t, f)
	var adds [][]string
	for range 20 {
		adds = append(adds, []string{"--add-secondary", f})
		mustGen(t, "--add-secondary", f)
	}
	r, _ := parseFile(t, f)
	before := ids(r)
	promoted, retired := before[20], before[1:11]
	var steps [][]string
	for i, id := range retired {
		steps = append(steps, []string{"--retire", id, f}, adds[i])
	}
	genAtOnce(t, append(steps, []string{"--promote", promoted, f})...)
	r, _ = parseFile(t, f)
	got := ids(r)
	if len(got) != 21-10+10 || got[0] != promoted || !slices.Contains(got, before[0]) {
		t.Fatalf("after 10 --retire, 10 --add-secondary and --promote %s at once: %d keys, primary %s; want 21, primary %s, %s kept",
			promoted, len(got), got[0], promoted, before[0])
	}
	for _, id := range retired {
		if slices.Contains(got, id) {
			t.Fatalf("retired key_id %s is back", id)
		}
	}
}
