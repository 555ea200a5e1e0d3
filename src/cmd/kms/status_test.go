package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
)

// kmsStatus runs `kms status` (or refresh) against sock.
func kmsStatus(t *testing.T, sub, sock string, args ...string) (nodeStatus, string, int) {
	t.Helper()
	out, errOut, code := testbin.Run(t, testbin.KMS(t), append([]string{sub, "--endpoint", "unix://" + sock, "--output", "json"}, args...)...)
	var ns nodeStatus
	if out != "" {
		if err := json.Unmarshal([]byte(out), &ns); err != nil {
			t.Fatalf("kms %s printed no JSON: %v\n%s", sub, err, out)
		}
	}
	return ns, errOut, code
}

func roles(ns nodeStatus) string {
	var s []string
	for _, k := range ns.Keys {
		s = append(s, k.KeyID+"="+k.Role)
	}
	return strings.Join(s, " ")
}

// An operator follows a two-phase rotation on one node with kms refresh
// and kms status: each step shows in the keys and roles the daemon reports,
// and the exit codes tell a script whether the node serves.
func TestStatusAndRefresh(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring")
	a, b := testbin.NewKey(), testbin.NewKey()
	ida, idb := keyID(a), keyID(b)
	testbin.WriteKeyring(t, ring, a)
	d := startDaemon(t, sock, "--command", "cat "+ring, "--min-timeout", "2s", "--timeout", "6s", "--refresh-interval", "3s", "--command-timeout", "2s")

	ns, errOut, code := kmsStatus(t, "status", sock)
	if code != 0 || !ns.Serving || ns.Primary != ida || roles(ns) != ida+"=primary" || ns.Version == "" {
		t.Fatalf("status: exit %d %+v %s", code, ns, errOut)
	}
	for _, step := range []struct {
		keys [][]byte
		want string
	}{
		{[][]byte{a, b}, ida + "=primary " + idb + "=listed"},
		{[][]byte{b, a}, idb + "=primary " + ida + "=listed"},
		{[][]byte{b}, idb + "=primary " + ida + "=unlisted"},
	} {
		testbin.WriteKeyring(t, ring, step.keys...)
		ns, errOut, code := kmsStatus(t, "refresh", sock)
		if code != 0 || roles(ns) != step.want {
			t.Fatalf("refresh: exit %d, keys %q, want %q: %s", code, roles(ns), step.want, errOut)
		}
	}
	text, _, code := testbin.Run(t, testbin.KMS(t), "status", "--endpoint", "unix://"+sock)
	if code != 0 || !strings.Contains(text, "serving") || !strings.Contains(text, idb+"  primary") {
		t.Fatalf("text status: exit %d\n%s", code, text)
	}

	// The command fails: refresh says so (exit 1), the node still serves.
	os.Remove(ring)
	ns, errOut, code = kmsStatus(t, "refresh", sock)
	if code != 1 || !ns.Serving || ns.FailedRuns == 0 || !strings.Contains(errOut, "No such file") {
		t.Fatalf("failed refresh: exit %d %+v %q", code, ns, errOut)
	}
	// Purged: status exits 1.
	testbin.WaitFor(t, "the purge", 30*time.Second, func() bool { return strings.Contains(d.Stderr(), "KEK purged") })
	ns, errOut, code = kmsStatus(t, "status", sock)
	if code != 1 || ns.Serving || len(ns.Keys) != 0 || !strings.Contains(errOut, "not serving") {
		t.Fatalf("purged status: exit %d %+v %q", code, ns, errOut)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"status", "--endpoint", "unix://" + dir + "/none.sock"}, 1, "cannot get the status"},
		{[]string{"status", "--endpoint", "/run/kms.sock"}, 2, "want unix:///absolute/path"},
		{[]string{"status", "--output", "yaml"}, 2, `--output "yaml"`},
		{[]string{"refresh", "--wait", "0s"}, 2, "must be positive"},
	} {
		_, errOut, code := testbin.Run(t, testbin.KMS(t), tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d %q; want %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

// keyID is a key's key_id, from src/kek.
func keyID(secret []byte) string {
	k, err := kek.NewKey(bytes.Clone(secret))
	if err != nil {
		panic(err)
	}
	return k.ID.String()
}
