package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cmdkms/kms/src/testbin"
)

// escapingCommand prints the keyring ring and leaves children that left
// its process group (setsid) holding stdout and stderr open; they are
// killed when the test ends.
func escapingCommand(t *testing.T, dir, ring string) string {
	t.Helper()
	pids := filepath.Join(dir, "escapees")
	t.Cleanup(func() {
		b, _ := os.ReadFile(pids)
		for _, f := range strings.Fields(string(b)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return fmt.Sprintf("setsid sleep 300 & echo $! >> %s; cat %s", pids, ring)
}

// A KEK command that leaves a child outside its process group holding its
// output works: `kms check`, the daemon's first run and `kms refresh` end
// when the command has exited, not at --command-timeout (30 s), failed.
func TestCommandWithAnEscapedChild(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring")
	key := testbin.NewKey()
	testbin.WriteKeyring(t, ring, key)
	command := escapingCommand(t, dir, ring)

	// Each would fail at the 30 s --command-timeout if it waited for the
	// escapee.
	out, errOut, code := testbin.Run(t, testbin.KMS(t), "check", "--command", command)
	if code != 0 || !strings.Contains(out, keyID(key)) {
		t.Fatalf("kms check: exit %d\n%s%s", code, out, errOut)
	}
	d := startDaemon(t, sock, "--command", command)
	_, errOut, code = kmsStatus(t, "refresh", sock)
	if code != 0 {
		t.Fatalf("kms refresh: exit %d\n%s\n%s", code, errOut, d.Stderr())
	}
}
