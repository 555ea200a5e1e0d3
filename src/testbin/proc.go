package testbin

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Ready is what kms logs once its socket accepts calls.
const Ready = "serving KMS v1beta1 and v2"

// Proc is a long-running process started by a test.
type Proc struct {
	Cmd    *exec.Cmd
	stderr Buffer
	exited chan struct{}
}

// Start runs cmd and, unless ready is empty, waits until its stderr
// contains ready. The process is killed when the test ends, if it still runs.
func Start(t testing.TB, cmd *exec.Cmd, ready string) *Proc {
	t.Helper()
	p := &Proc{Cmd: cmd, exited: make(chan struct{})}
	cmd.Stderr = &p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
	})
	if ready != "" {
		p.WaitLog(t, ready, 60*time.Second) // a -race build on a busy machine starts slowly
	}
	return p
}

// StartKMS runs the kms daemon (see KMS) with args on the unix socket sock
// and waits until it serves.
func StartKMS(t testing.TB, sock string, args ...string) *Proc {
	t.Helper()
	return Start(t, exec.Command(KMS(t), append(args, "--endpoint", "unix://"+sock)...), Ready)
}

// WaitLog waits until stderr contains s.
func (p *Proc) WaitLog(t testing.TB, s string, limit time.Duration) {
	t.Helper()
	deadline := time.After(limit)
	for !strings.Contains(p.Stderr(), s) {
		select {
		case <-p.exited:
			t.Fatalf("%s exited (%v) before logging %q:\n%s", p.Cmd.Path, p.Cmd.ProcessState, s, p.Stderr())
		case <-deadline:
			t.Fatalf("%s did not log %q within %v:\n%s", p.Cmd.Path, s, limit, p.Stderr())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stderr is everything the process wrote to stderr so far.
func (p *Proc) Stderr() string { return p.stderr.String() }

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) { p.Cmd.Process.Signal(sig) }

// Stop sends sig and returns the exit code.
func (p *Proc) Stop(t testing.TB, sig syscall.Signal) int {
	t.Helper()
	p.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not stop on %v:\n%s", p.Cmd.Path, sig, p.Stderr())
	}
	return p.Cmd.ProcessState.ExitCode()
}

// Run runs bin with args to its end and returns its stdout, its stderr and
// its exit code. Failing to start it fails the test.
func Run(t testing.TB, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
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

// Buffer is a bytes.Buffer that a process or a logger may write while the
// test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// CountProcs counts the processes whose command line is exactly argv
// (arguments joined by spaces), such as a KEK command's children.
func CountProcs(argv string) int {
	n := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.TrimSuffix(strings.ReplaceAll(string(b), "\x00", " "), " ") == argv {
			n++
		}
	}
	return n
}
