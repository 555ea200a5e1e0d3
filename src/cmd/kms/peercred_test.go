package main

// --allow-uid and --allow-gid, with real processes of other users: the
// test runs as root and starts `kms status` under other uids and gids.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
)

// A user and groups that exist nowhere but in the kernel's credentials:
// no entry in /etc/passwd is needed to run as them.
const (
	otherUID   = 4242
	socketGID  = 4243
	strangeGID = 4244
)

// sharedBinary copies the kms binary into dir, which it opens to every
// user (the socket's mode still decides who may connect), so that
// processes of other users can run it.
func sharedBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := copyKMS(t, dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// statusAs runs `kms status` against sock as uid and gid and returns its
// exit code and output.
func statusAs(t *testing.T, bin, sock string, uid, gid uint32) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, "status", "--endpoint", "unix://"+sock, "--wait", "2s")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState.ExitCode(), string(out)
}

// groupSocket gives sock to group gid with mode 0660, as an operator does
// for an API server that runs as another user.
func groupSocket(t *testing.T, sock string, gid int) {
	t.Helper()
	if err := os.Chown(sock, 0, gid); err != nil {
		t.Fatal(err)
	}
}

func TestAllowUID(t *testing.T) {
	dir := testbin.ShortDir(t)
	bin := sharedBinary(t, dir)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := startDaemon(t, sock, "--command", "cat "+ring, "--socket-mode", "0660", "--allow-uid", "0",
		"--health-address", "127.0.0.1:0")
	groupSocket(t, sock, socketGID)
	base := healthURL(t, d)

	// Not the socket's permissions: a process outside its group cannot
	// connect at all, and is no refusal of kms's.
	if code, out := statusAs(t, bin, sock, otherUID, strangeGID); code != 1 || !strings.Contains(out, "permission denied") {
		t.Fatalf("outside the socket's group: exit %d %q; want 1 and permission denied", code, out)
	}
	if got := scrape(t, base).value(t, "kms_connections_refused_total", "reason=not_allowed"); got != 0 {
		t.Fatalf("kms_connections_refused_total = %v before any caller reached kms", got)
	}

	// In the socket's group, but not an allowed uid: refused, three times.
	for range 3 {
		if code, out := statusAs(t, bin, sock, otherUID, socketGID); code != 1 {
			t.Fatalf("uid %d: exit %d %q; want 1 (refused)", otherUID, code, out)
		}
	}
	m := scrape(t, base)
	if got := m.value(t, "kms_connections_refused_total", "reason=not_allowed"); got < 3 {
		t.Errorf("kms_connections_refused_total{reason=not_allowed} = %v, want >= 3", got)
	}
	if got := m.value(t, "kms_connections_refused_total", "reason=no_credentials"); got != 0 {
		t.Errorf("kms_connections_refused_total{reason=no_credentials} = %v", got)
	}
	// Named once, with who it was; the retries within the quiet period
	// are counted, not logged.
	want := `refused a connection from a caller outside --allow-uid and --allow-gid" uid=` +
		strconv.Itoa(otherUID) + " gid=" + strconv.Itoa(socketGID) + " pid="
	if n := strings.Count(d.Stderr(), "refused a connection"); n != 1 || !strings.Contains(d.Stderr(), want) {
		t.Errorf("want one log line %q; log:\n%s", want, d.Stderr())
	}

	// Root is served, over the same socket, meanwhile.
	keyStatus(t, d)
	if code, out := statusAs(t, bin, sock, 0, 0); code != 0 {
		t.Fatalf("root: exit %d %q", code, out)
	}
}

// --allow-gid serves the processes of a group, whoever they are, and
// refuses others, root included.
func TestAllowGID(t *testing.T) {
	dir := testbin.ShortDir(t)
	bin := sharedBinary(t, dir)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := startDaemon(t, sock, "--command", "cat "+ring, "--socket-mode", "0660", "--allow-gid", strconv.Itoa(socketGID),
		"--health-address", "127.0.0.1:0")
	groupSocket(t, sock, socketGID)

	if code, out := statusAs(t, bin, sock, otherUID, socketGID); code != 0 {
		t.Fatalf("uid %d gid %d: exit %d %q; want 0 (served)", otherUID, socketGID, code, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := d.v2.Status(ctx, &v2.StatusRequest{}); status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("root, gid 0: %v; want refused", err)
	}
	if got := scrape(t, healthURL(t, d)).value(t, "kms_connections_refused_total", "reason=not_allowed"); got < 1 {
		t.Errorf("kms_connections_refused_total{reason=not_allowed} = %v", got)
	}
	if !strings.Contains(d.Stderr(), "uid=0 gid=0 pid=") {
		t.Errorf("no log line for root's refusal:\n%s", d.Stderr())
	}
}

// A socket systemd passes is checked alike.
func TestAllowUIDWithSystemdSocket(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	uid := strconv.Itoa(os.Geteuid() + 1)
	d := startActivated(t, sock, "--command", "cat "+ring, "--allow-uid", uid)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := d.v2.Status(ctx, &v2.StatusRequest{}); err == nil {
		t.Fatalf("served a caller outside --allow-uid %s", uid)
	}
	d.WaitLog(t, "uid="+strconv.Itoa(os.Geteuid())+" gid=", 5*time.Second)
}
