package main

// Signals and timers as an unlucky operator meets them.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/testbin"
)

// runs counts the lines the counting command (see countingCommand) wrote.
func runs(t *testing.T, counter string) int {
	t.Helper()
	b, err := os.ReadFile(counter)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// countingCommand prints the keyring and adds a line to counter per run.
func countingCommand(ring, counter string) string {
	return fmt.Sprintf("echo run >> %s; cat %s", counter, ring)
}

// --timeout 876000h (100 years, "never purge") overflowed the refresh
// delay and ran the command hundreds of times a second. The longest
// accepted timeout, a year, refreshes on schedule; longer is a usage error.
func TestTimeoutLimits(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring, counter := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring"), filepath.Join(dir, "runs")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	code, out := runToExit(t, "--command", "cat "+ring, "--endpoint", "unix://"+sock, "--timeout", "876000h")
	if code != 2 || !strings.Contains(out, "above the maximum of 8760h0m0s") {
		t.Fatalf("--timeout 876000h: exit %d, %q; want 2 naming the maximum", code, out)
	}
	for _, tc := range []struct{ args, want string }{
		{"--refresh-interval 1h", "--refresh-interval 1h0m0s must be positive and below --timeout 1h0m0s"},
		{"--refresh-interval 500ms", "must be at least 1s"},
		{"--refresh-interval -1s", "must be at least 1s"},
		{"--refresh-interval 50m --command-timeout 10m", "plus --command-timeout 10m0s reach --timeout 1h0m0s"},
		{"--timeout 1m --command-timeout 50s", "--refresh-interval 12s plus --command-timeout 50s reach --timeout 1m0s"},
	} {
		code, out := runToExit(t, append([]string{"--command", "true"}, strings.Fields(tc.args)...)...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%s: exit %d, %q; want 2 and %q", tc.args, code, out, tc.want)
		}
	}

	d := startDaemon(t, sock, "--command", countingCommand(ring, counter), "--timeout", "8760h")
	time.Sleep(3 * time.Second)
	if n := runs(t, counter); n != 1 {
		t.Fatalf("--timeout 8760h: the command ran %d times in 3 s, want once", n)
	}
	keyStatus(t, d)
	if !strings.Contains(d.Stderr(), "refresh_every=1752h0m0s") {
		t.Errorf("the refresh interval (timeout/5) is not logged:\n%s", d.Stderr())
	}
}

// A SIGHUP that arrives while a refresh runs is not lost: the run in flight
// read the keyring before the operator changed it, so another run follows.
func TestSIGHUPDuringARefresh(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring")
	hold, read := filepath.Join(dir, "hold"), filepath.Join(dir, "read")
	a, b := testbin.NewKey(), testbin.NewKey()
	testbin.WriteKeyring(t, ring, a)
	// While hold exists, a run reads the keyring, says so, and waits until
	// hold is removed: the test, not the scheduler, decides when it ends.
	cmd := fmt.Sprintf(`k=$(cat %[1]s); if [ -e %[2]s ]; then touch %[3]s; while [ -e %[2]s ]; do sleep 0.01; done; fi; printf '%%s\n' "$k"`, ring, hold, read)
	d := startDaemon(t, sock, "--command", cmd)
	before := keyStatus(t, d).KeyId
	os.WriteFile(hold, nil, 0o600)
	d.Signal(syscall.SIGHUP)
	testbin.WaitFor(t, "the run to read the old keyring", 30*time.Second, func() bool { return exists(read) })
	testbin.WriteKeyring(t, ring, b, a)
	d.Signal(syscall.SIGHUP)
	d.WaitLog(t, "runs again when this run ends", 30*time.Second)
	os.Remove(hold)
	testbin.WaitFor(t, "the rotated keyring to be served", 30*time.Second, func() bool {
		return keyStatus(t, d).KeyId != before
	})
}

// A SIGHUP before the first run has finished neither kills the daemon nor
// is it lost.
func TestSIGHUPBeforeTheFirstRun(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring, counter := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring"), filepath.Join(dir, "runs")
	begun, release := filepath.Join(dir, "begun"), filepath.Join(dir, "release")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	// The first run says it has begun (kms handles SIGHUP from before it
	// starts the command) and waits for the test to release it.
	command := fmt.Sprintf("touch %s; while [ ! -e %s ]; do sleep 0.01; done; %s", begun, release, countingCommand(ring, counter))
	cmd := exec.Command(testbin.KMS(t), "--command", command, "--endpoint", "unix://"+sock)
	p := testbin.Start(t, cmd, "")
	testbin.WaitFor(t, "the first run to begin", 60*time.Second, func() bool { return exists(begun) })
	p.Signal(syscall.SIGHUP)
	p.WaitLog(t, "SIGHUP: running the KEK command", 30*time.Second)
	os.WriteFile(release, nil, 0o600)
	p.WaitLog(t, testbin.Ready, 30*time.Second)
	testbin.WaitFor(t, "the run the SIGHUP asked for", 15*time.Second, func() bool { return runs(t, counter) == 2 })
	connect(t, p, sock)
}

// SIGTERM while the first run is under way kills the command's process
// group and stops the daemon at once, leaving no socket behind.
func TestSIGTERMDuringTheFirstRun(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock := filepath.Join(dir, "kms.sock")
	// The command's processes are known by a path of this test's own, so that
	// no other test's (or package's) sleep is counted.
	marker := uniqueSleep(t, dir) + " 400"
	cmd := exec.Command(testbin.KMS(t), "--command", marker+" & "+marker, "--command-timeout", "50s", "--endpoint", "unix://"+sock)
	p := testbin.Start(t, cmd, "")
	testbin.WaitFor(t, "the command to run", 30*time.Second, func() bool { return testbin.CountProcs(marker) == 2 })
	began := time.Now()
	if code := p.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.Stderr())
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("stopping took %v: it waited for the command", took)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Error("the socket was left behind")
	}
	testbin.WaitFor(t, "the command's processes to be killed", 10*time.Second, func() bool { return testbin.CountProcs(marker) == 0 })
	if !strings.Contains(p.Stderr(), "stopped before the first KEK was loaded") {
		t.Errorf("log:\n%s", p.Stderr())
	}
}

// uniqueSleep links sleep(1) into dir, so that the processes it runs can be
// told apart by their command line (see testbin.CountProcs).
func uniqueSleep(t *testing.T, dir string) string {
	t.Helper()
	bin, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "sleep")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	return link
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
