package keysource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/testbin"
)

// Close during Start, in whichever order they meet, leaves nothing served
// and nothing running; Start after Close is refused; and a nil Log is
// allowed (Start logs the first load).
func TestCloseDuringStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	testbin.WriteKeyring(t, path, testbin.NewKey())
	for range 20 {
		s, err := New(Config{Command: "cat " + path, Timeout: time.Hour, CommandTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		started := make(chan error, 1)
		go func() { started <- s.Start(context.Background()) }()
		s.Close()
		if id, err := s.Primary(); err == nil {
			t.Fatalf("after Close, key %s is served", id)
		}
		if err := <-started; err == nil {
			// Start won: Close must have stopped what it started.
			if id, err := s.Primary(); err == nil {
				t.Fatalf("Start returned after Close and key %s is served", id)
			}
		} else if !errors.Is(err, ErrStopping) {
			t.Fatalf("Start during Close: %v", err)
		}
		if err := s.Start(context.Background()); !errors.Is(err, ErrStopping) {
			t.Fatalf("Start after Close: %v", err)
		}
	}
}

// RefreshAndWait never waits for a source that is closed, whether Close
// came before Start or after it.
func TestRefreshAndWaitAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	testbin.WriteKeyring(t, path, testbin.NewKey())
	started, _ := start(t, Config{Command: "cat " + path})
	never, err := New(Config{Command: "cat " + path, Timeout: time.Hour, CommandTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*Source{"after Start": started, "before Start": never} {
		s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := s.RefreshAndWait(ctx)
		cancel()
		if !errors.Is(err, ErrStopping) {
			t.Errorf("%s: RefreshAndWait after Close: %v, want ErrStopping", name, err)
		}
	}
}

// escapee is a command that leaves a child outside its process group
// (setsid) holding stdout and stderr open, then runs then; the child is
// killed when the test ends.
func escapee(t *testing.T, then string) string {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "escapee")
	t.Cleanup(func() {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return
		}
		var pid int
		if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return fmt.Sprintf("setsid sleep 300 & echo $! > %s; %s", pidFile, then)
}

// A run is over when the command has exited: a child that left its
// process group and holds stdout does not make it wait for the timeout.
func TestRunEndsWhenTheCommandExits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	testbin.WriteKeyring(t, path, testbin.NewKey())
	began := time.Now()
	out, _, err := Run(context.Background(), []string{"/bin/sh", "-c", escapee(t, "cat "+path)}, time.Minute)
	if err != nil || !strings.HasPrefix(string(out), "kms-keyring v1\n") {
		t.Fatalf("%q, %v", out, err)
	}
	// Far below the minute the escapee would hold the run.
	if d := time.Since(began); d > 20*time.Second {
		t.Fatalf("the run took %v", d)
	}
}

// Cancelling a run ends it at once, also while a child that escaped the
// process group holds its pipes, and it is reported as cancelled.
func TestRunEndsAtOnceWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := filepath.Join(t.TempDir(), "ready")
	go func() {
		_, _, err := Run(ctx, []string{"/bin/sh", "-c", escapee(t, "touch "+ready+"; sleep 300")}, time.Minute)
		done <- err
	}()
	waitFor(t, "the command to run", func() bool { _, err := os.Stat(ready); return err == nil })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, ErrCancelled) || errors.Is(err, ErrTimeout) {
			t.Fatalf("cancelled run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the cancelled run did not end; it waits for the escapee")
	}
	// Cancelled before it started: no command runs, and it is no failure.
	if _, _, err := Run(ctx, []string{"/bin/sh", "-c", "true"}, time.Minute); !errors.Is(err, ErrCancelled) {
		t.Fatalf("run cancelled before it started: %v", err)
	}
}

// Close ends a refresh at once while an escapee holds the pipes, and the
// cancelled run is not reported as a run of the command.
func TestCloseEndsARunHeldByAnEscapee(t *testing.T) {
	dir := t.TempDir()
	path, hang, ready := filepath.Join(dir, "keyring"), filepath.Join(dir, "hang"), filepath.Join(dir, "ready")
	testbin.WriteKeyring(t, path, testbin.NewKey())
	rec := &recorder{}
	s, _ := start(t, Config{Command: fmt.Sprintf("if [ -e %s ]; then %s; fi; cat %s", hang, escapee(t, "touch "+ready+"; sleep 300"), path),
		Hooks: rec, CommandTimeout: 50 * time.Second})
	os.WriteFile(hang, nil, 0o600)
	s.Refresh()
	waitFor(t, "the refresh to run", func() bool { _, err := os.Stat(ready); return err == nil })
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close waited for the escapee")
	}
	if rec.runs() != 1 || rec.has(event{outcome: OutcomeFailed}) || rec.has(event{outcome: OutcomeTimeout}) {
		t.Fatalf("the cancelled run was reported: %+v", rec.events)
	}
}
