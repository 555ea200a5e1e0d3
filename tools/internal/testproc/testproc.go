// Package testproc runs the project's binaries as separate processes in
// tests under tools/ (src/internal/testbin is out of their reach: Go's
// internal rule confines it to src/).
package testproc

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

var (
	binDir string
	mu     sync.Mutex
	built  = map[string]string{}
)

// Main runs the tests of a package that uses Binary, from its TestMain:
// binaries are built once into a dir that lives as long as the test binary.
func Main(m *testing.M) int {
	dir, err := os.MkdirTemp("", "testproc")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	binDir = dir
	return m.Run()
}

// Binary returns the program of the main package pkg (an import path).
// Under Bazel the test names it in the environment variable env, as the
// rlocationpath of a data dependency; otherwise it is built once with go
// build, with -race when the test has it, so the program is race-checked
// too.
func Binary(t testing.TB, env, pkg string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return resolve(t, env, p)
	}
	mu.Lock()
	defer mu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	if binDir == "" {
		t.Fatal("testproc.Binary needs TestMain to call testproc.Main")
	}
	out := filepath.Join(binDir, filepath.Base(pkg))
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	if b, err := exec.Command("go", append(args, pkg)...).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

func resolve(t testing.TB, env, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	// Bazel runs tests in <runfiles>/<workspace>; RUNFILES_DIR and
	// TEST_SRCDIR name <runfiles>.
	for _, root := range []string{os.Getenv("RUNFILES_DIR"), os.Getenv("TEST_SRCDIR"), ".."} {
		if root == "" {
			continue
		}
		c := filepath.Join(root, p)
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			abs, err := filepath.Abs(c)
			if err != nil {
				t.Fatal(err)
			}
			return abs
		}
	}
	t.Fatalf("%s=%s: not found under the runfiles", env, p)
	return ""
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

// Proc is a long-running process started by a test.
type Proc struct {
	Cmd    *exec.Cmd
	stderr syncBuf
	exited chan struct{}
}

// Start runs cmd and waits until its stderr contains ready. The process
// is killed when the test ends if it still runs.
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
	p.WaitLog(t, ready, 60*time.Second) // a -race build on a busy machine starts slowly
	return p
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

// Stop sends sig and returns the exit code.
func (p *Proc) Stop(t testing.TB, sig syscall.Signal) int {
	t.Helper()
	p.Cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not stop on %v:\n%s", p.Cmd.Path, sig, p.Stderr())
	}
	return p.Cmd.ProcessState.ExitCode()
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
