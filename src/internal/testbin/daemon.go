package testbin

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Ready is what kms logs once its socket accepts calls.
const Ready = "serving KMS v1beta1 and v2"

// Daemon is a kms process started by a test.
type Daemon struct {
	Cmd    *exec.Cmd
	stderr syncBuf
	exited chan struct{}
}

// Start runs cmd (a kms command line) and waits until it logs Ready. The
// process is killed when the test ends, if it still runs.
func Start(t testing.TB, cmd *exec.Cmd) *Daemon {
	t.Helper()
	d := &Daemon{Cmd: cmd, exited: make(chan struct{})}
	cmd.Stderr = &d.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-d.exited
	})
	deadline := time.After(60 * time.Second) // a -race build on a busy machine starts slowly
	for !strings.Contains(d.Stderr(), Ready) {
		select {
		case <-d.exited:
			t.Fatalf("kms exited (%v) before serving:\n%s", cmd.ProcessState, d.Stderr())
		case <-deadline:
			t.Fatalf("kms is not serving after 60s:\n%s", d.Stderr())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return d
}

// Stderr is everything the daemon logged so far.
func (d *Daemon) Stderr() string { return d.stderr.String() }

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig syscall.Signal) { d.Cmd.Process.Signal(sig) }

// Stop sends sig and returns the exit code.
func (d *Daemon) Stop(t testing.TB, sig syscall.Signal) int {
	t.Helper()
	d.Signal(sig)
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("kms did not stop on %v:\n%s", sig, d.Stderr())
	}
	return d.Cmd.ProcessState.ExitCode()
}

// ShortDir makes a temp dir for sockets: their paths must stay under 108
// bytes, and Bazel's TEST_TMPDIR is long, so this uses the system temp dir.
func ShortDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "kms")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
