package keysource

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/testbin"
)

// runs counts the successful runs a recorder saw.
func (r *recorder) runs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.outcome == OutcomeSuccess {
			n++
		}
	}
	return n
}

// gate is a named pipe a command blocks on (`read x < gate`) until the
// test opens it. Opening waits for the command to be there, but not for
// ever: a command that is gone (its run timed out) would leave a blocking
// open hanging until the test binary's timeout (seen, under -race on a
// starved machine).
func gate(t *testing.T) (path string, open func()) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, func() {
		t.Helper()
		var f *os.File
		testbin.WaitFor(t, "a command waiting at the gate", 15*time.Second, func() bool {
			var err error
			// Without a reader, a non-blocking open for writing fails (ENXIO).
			f, err = os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
			return err == nil
		})
		f.Close()
	}
}

// lines counts the lines of path, 0 if it does not exist.
func lines(path string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), "\n")
}

// A refresh asked for while a run is under way (an operator's SIGHUP after
// editing the keyring) is never dropped: the run in flight read the keyring
// before the change, so one more run follows it; several such requests
// cause just one.
func TestRefreshDuringARunRunsAgain(t *testing.T) {
	dir := t.TempDir()
	path, slow, runs := filepath.Join(dir, "keyring"), filepath.Join(dir, "slow"), filepath.Join(dir, "runs")
	wait, open := gate(t)
	a, b := testbin.NewKey(), testbin.NewKey()
	testbin.WriteKeyring(t, path, a)
	// Each run reads the keyring and counts itself, then the slow one
	// waits at the gate, for as long as the test takes to get there: no
	// command timeout may end it first.
	s, logs := start(t, Config{Command: fmt.Sprintf(`k=$(cat %s); echo >> %s; if [ -e %s ]; then read x < %s; fi; printf '%%s\n' "$k"`, path, runs, slow, wait), CommandTimeout: time.Minute})
	os.WriteFile(slow, nil, 0o600)
	s.Refresh()
	waitFor(t, "the slow run to begin", func() bool { return lines(runs) == 2 })
	testbin.WriteKeyring(t, path, b, a)
	for range 5 {
		s.Refresh()
	}
	waitFor(t, "the requests to be seen", func() bool { return logs.count("runs again when this run ends") > 0 })
	os.Remove(slow)
	open()
	waitFor(t, "the rotated keyring", func() bool { return primary(s) == idOf(t, b) })
	// One more run, waited for: a run beyond the one for the five
	// requests would come before it, and be counted.
	if err := s.RefreshAndWait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := lines(runs); n != 4 {
		t.Errorf("%d runs, want 4: the first, the slow one, one more for the five refreshes during it, and the last", n)
	}
	if n := logs.count("runs again when this run ends"); n != 1 {
		t.Errorf("the coalesced refresh was logged %d times:\n%s", n, logs)
	}
}

// stallingLog holds the loop in its log line about a request during a
// run, when armed, until released: the loop is then busy, and what comes
// meanwhile is ready together when it selects again.
type stallingLog struct {
	logBuf
	armed    atomic.Bool
	stalled  chan struct{}
	released chan struct{}
}

func (l *stallingLog) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("runs again when this run ends")) && l.armed.CompareAndSwap(true, false) {
		l.stalled <- struct{}{}
		<-l.released
	}
	return l.logBuf.Write(p)
}

// refresher, when armed, asks for refreshes from within a run just before
// it ends: one, seen by the loop, which then stalls in its log line; and a
// second, which the loop gets together with the run's result.
type refresher struct {
	recorder
	s   *Source
	log *stallingLog
	arm atomic.Bool
}

func (r *refresher) CommandRan(o Outcome, took time.Duration, end time.Time) {
	r.recorder.CommandRan(o, took, end)
	if !r.arm.CompareAndSwap(true, false) {
		return
	}
	r.log.armed.Store(true)
	r.s.Refresh()
	<-r.log.stalled
	r.s.Refresh()
	go func() {
		// The result is sent as soon as this returns; released before,
		// the loop would see the request first, which hides a fault
		// but fails nothing.
		time.Sleep(50 * time.Millisecond)
		r.log.released <- struct{}{}
	}()
}

// Requests during a run cause exactly one more run, also when the last of
// them reaches the loop together with the run's result.
func TestRequestsWithTheResultCauseOneRun(t *testing.T) {
	dir := t.TempDir()
	path, runs := filepath.Join(dir, "keyring"), filepath.Join(dir, "runs")
	testbin.WriteKeyring(t, path, testbin.NewKey())
	log := &stallingLog{stalled: make(chan struct{}), released: make(chan struct{})}
	r := &refresher{log: log}
	s, err := New(Config{Command: fmt.Sprintf("echo >> %s; cat %s", runs, path), Hooks: r,
		Timeout: time.Hour, CommandTimeout: 10 * time.Second, Log: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	r.s = s
	t.Cleanup(s.Close)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		before, ended := lines(runs), r.runs()
		r.arm.Store(true)
		if err := s.RefreshAndWait(context.Background()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the run the requests cause", func() bool { return r.runs() >= ended+2 })
		// A spurious run would start as soon as that one ended. Time
		// for it to show can only hide it, not fail the test.
		time.Sleep(300 * time.Millisecond)
		if n := lines(runs) - before; n != 2 {
			t.Fatalf("round %d: %d runs, want 2: the one asked for, and one more for the requests during it", i, n)
		}
	}
}

// Stopping the daemon while its first run is under way kills the
// command's whole process group at once and Start returns.
func TestStartStopsWhenCancelled(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	s, err := New(Config{Command: fmt.Sprintf("sleep 300 & echo $! >> %s; echo $$ >> %s; wait; echo never", pids, pids),
		Timeout: time.Hour, CommandTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	waitFor(t, "the command to run", func() bool { return lines(pids) == 2 })
	began := time.Now()
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "stopped while the KEK command ran") {
			t.Fatalf("Start: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not return when its context ended")
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("Start returned %v after the cancel", d)
	}
	waitDead(t, "the command's processes", pids)
}

// Every Timeout New accepts gives sane timers: the largest, a year, does
// not overflow into a command run in a tight loop.
func TestTimersAtTheLimits(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, timeout := range []time.Duration{time.Minute, time.Hour, MaxTimeout} {
		s, err := New(Config{Command: "true", Timeout: timeout, CommandTimeout: time.Second, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		interval := timeout / RefreshDivisor
		for range 100 {
			if d := s.refreshDelay(); d <= interval*9/10 || d > interval {
				t.Fatalf("timeout %v: refresh after %v, want about %v", timeout, d, interval)
			}
		}
		for n := 1; n < 100; n++ {
			if d := s.backoff(n); d <= 0 || d > 30*time.Second {
				t.Fatalf("timeout %v: backoff(%d) = %v", timeout, n, d)
			}
		}
	}
	for _, cfg := range []Config{
		{Timeout: MaxTimeout + time.Nanosecond, CommandTimeout: time.Second},
		{Timeout: time.Hour, RefreshInterval: time.Hour, CommandTimeout: time.Second},
		{Timeout: time.Hour, RefreshInterval: -time.Second, CommandTimeout: time.Second},
		{Timeout: time.Hour, CommandTimeout: time.Hour},
		// What the daemon's flags refuse, New refuses too: a run
		// starting at the refresh would end after the purge.
		{Timeout: time.Hour, RefreshInterval: 30 * time.Minute, CommandTimeout: 30 * time.Minute},
	} {
		cfg.Command, cfg.Log = "true", log
		if _, err := New(cfg); err == nil {
			t.Errorf("New accepted %+v", cfg)
		}
	}
}

// A refresh that finds the same keys keeps the ciphers it has and wipes
// the new ones, so each key is in memory once; dropped keys are wiped only
// after the requests using them have finished.
func TestOneCopyOfEachKeyAndSafeWipes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	a := testbin.NewKey()
	testbin.WriteKeyring(t, path, a)
	rec := &recorder{}
	s, _ := start(t, Config{Command: "cat " + path, Hooks: rec})
	before := s.keys.Load().set.Keys()[0]
	s.Refresh()
	waitFor(t, "a second run", func() bool { return rec.runs() == 2 })
	if after := s.keys.Load().set.Keys()[0]; after != before {
		t.Fatal("a refresh with the same key replaced its cipher")
	}

	// A request holds the keys while the source closes: the wipe waits.
	s.users.RLock()
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	waitFor(t, "the purge to be published", func() bool { return primary(s) == "" })
	select {
	case <-closed:
		t.Fatal("Close wiped the keys while a request used them")
	case <-time.After(200 * time.Millisecond):
	}
	s.users.RUnlock()
	<-closed
	if _, _, err := s.Encrypt([]byte("x")); err != ErrPurged {
		t.Fatalf("Encrypt after Close: %v", err)
	}
}
