package keysource

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
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

// A refresh asked for while a run is under way (an operator's SIGHUP after
// editing the keyring) is never dropped: the run in flight read the keyring
// before the change, so one more run follows it; several such requests
// cause just one.
func TestRefreshDuringARunRunsAgain(t *testing.T) {
	dir := t.TempDir()
	path, slow := filepath.Join(dir, "keyring"), filepath.Join(dir, "slow")
	a, b := testbin.NewKey(), testbin.NewKey()
	testbin.WriteKeyring(t, path, a)
	rec := &recorder{}
	// The keyring is read first, then the run takes its time.
	s, logs := start(t, Config{Command: fmt.Sprintf(`k=$(cat %s); if [ -e %s ]; then sleep 1; fi; printf '%%s\n' "$k"`, path, slow), Hooks: rec})
	os.WriteFile(slow, nil, 0o600)
	s.Refresh()
	waitFor(t, "the slow run to begin", func() bool { return testbin.CountProcs("sleep 1") > 0 })
	testbin.WriteKeyring(t, path, b, a)
	for range 5 {
		s.Refresh()
	}
	waitFor(t, "the rotated keyring", func() bool { return primary(s) == idOf(t, b) })
	time.Sleep(1500 * time.Millisecond) // time for any further runs to show
	if n := rec.runs(); n != 3 {
		t.Errorf("%d successful runs, want 3: the first, the slow one, and one more for the five refreshes during it", n)
	}
	if n := logs.count("runs again when this run ends"); n != 1 {
		t.Errorf("the coalesced refresh was logged %d times:\n%s", n, logs)
	}
}

// Stopping the daemon while its first run is under way kills the
// command's whole process group at once and Start returns.
func TestStartStopsWhenCancelled(t *testing.T) {
	marker := fmt.Sprintf("sleep 3%d", os.Getpid()%1000)
	s, err := New(Config{Command: marker + " & " + marker + "; echo never", Timeout: time.Hour, CommandTimeout: time.Minute, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	waitFor(t, "the command to run", func() bool { return testbin.CountProcs(marker) == 2 })
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
	waitFor(t, "the command's processes to end", func() bool { return testbin.CountProcs(marker) == 0 })
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
