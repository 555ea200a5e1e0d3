package keysource

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
)

// logBuf is an io.Writer the test can read while the loop writes.
type logBuf struct{ testbin.Buffer }

func (l *logBuf) count(s string) int { return strings.Count(l.String(), s) }

func idOf(t *testing.T, key []byte) string {
	r, err := kek.Parse(key)
	if err != nil {
		t.Fatal(err)
	}
	return r.Keys[0].ID.String()
}

func start(t *testing.T, cfg Config) (*Source, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = 2 * time.Second
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Hour
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v\n%s", err, logs)
	}
	return s, logs
}

// primary is the primary's key_id, "" while purged.
func primary(s *Source) string {
	id, _ := s.Primary()
	return id
}

// startErr is what Start says for cfg.
func startErr(cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Start(context.Background())
}

// waitFor polls cond; the deadline is generous because CI machines are
// shared, while the assertions about *when* things happen are separate.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testbin.WaitFor(t, what, 15*time.Second, cond)
}

func TestArgv(t *testing.T) {
	got, err := Argv("/bin/sh", "clevis decrypt < kek.jwe")
	if err != nil || len(got) != 3 || got[0] != "/bin/sh" || got[1] != "-c" || got[2] != "clevis decrypt < kek.jwe" {
		t.Fatalf("with shell: %q %v", got, err)
	}
	got, err = Argv("/nonexistent/sh", "  kek-file  --path /etc/kms/kek ")
	if err != nil || strings.Join(got, "|") != "kek-file|--path|/etc/kms/kek" {
		t.Fatalf("without shell: %q %v", got, err)
	}
	for _, cmd := range []string{"clevis decrypt < kek.jwe", "a | b", "echo $HOME", "x 'quoted arg'"} {
		if _, err := Argv("/nonexistent/sh", cmd); err == nil || !strings.Contains(err.Error(), "shell syntax") {
			t.Errorf("%q without shell: %v", cmd, err)
		}
	}
	if _, err := Argv("/bin/sh", " "); err == nil {
		t.Error("empty command accepted")
	}
	// A directory or non-executable file is not a shell.
	dir := t.TempDir()
	notExec := filepath.Join(dir, "sh")
	os.WriteFile(notExec, []byte("#!/bin/true\n"), 0o644)
	for _, sh := range []string{dir, notExec} {
		if got, _ := Argv(sh, "true"); len(got) != 1 {
			t.Errorf("shell %s: %q", sh, got)
		}
	}
}

func TestWithoutShellTheCommandRunsDirectly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	key := testbin.NewKey()
	testbin.WriteKeyring(t, path, key)
	s, logs := start(t, Config{Command: "cat " + path, Shell: "/nonexistent/sh"})
	if got := primary(s); got != idOf(t, key) {
		t.Fatalf("primary %s", got)
	}
	if !strings.Contains(logs.String(), "no shell; running the KEK command directly") {
		t.Fatalf("the rule is not logged:\n%s", logs)
	}
}

func TestRunCapsStdout(t *testing.T) {
	out, _, err := Run(context.Background(), []string{"/bin/sh", "-c", "head -c 65536 /dev/zero"}, 5*time.Second)
	if err != nil || len(out) != MaxOutput {
		t.Fatalf("at the cap: %d bytes, %v", len(out), err)
	}
	began := time.Now()
	_, _, err = Run(context.Background(), []string{"/bin/sh", "-c", "cat /dev/zero"}, 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "more than 65536 bytes") {
		t.Fatalf("endless output: %v", err)
	}
	if time.Since(began) > 10*time.Second {
		t.Fatal("endless output was not cut off early")
	}
}

func TestRunKillsTheProcessGroupOnTimeout(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	began := time.Now()
	_, _, err := Run(context.Background(),
		[]string{"/bin/sh", "-c", "sleep 60 & echo $! > " + pidFile + "; wait"}, 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "did not finish within 2s") {
		t.Fatalf("hung command: %v", err)
	}
	if d := time.Since(began); d > 8*time.Second {
		t.Fatalf("took %v", d)
	}
	waitDead(t, "the grandchild", pidFile)
}

// A command that succeeds but leaves a process behind in its group, holding
// stdout and stderr open, succeeds, and the stray is killed. Clevis's sss
// pin does this: once other pins gave it enough shares it exits, leaving a
// tang pin's curl waiting on a hung server.
func TestRunKillsStraysWhenTheCommandExits(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	began := time.Now()
	out, _, err := Run(context.Background(),
		[]string{"/bin/sh", "-c", "sleep 60 & echo $! > " + pidFile + "; printf KEY"}, 20*time.Second)
	if err != nil || string(out) != "KEY" {
		t.Fatalf("%q, %v", out, err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	waitDead(t, "the stray", pidFile)
}

// waitDead waits until the processes whose pids are in pidFile, one a
// line, are gone, or zombies waiting for a PID 1 that does not reap.
func waitDead(t *testing.T, what, pidFile string) {
	t.Helper()
	pids, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range strings.Fields(string(pids)) {
		waitFor(t, what+" to die", func() bool {
			stat, err := os.ReadFile("/proc/" + pid + "/stat")
			return err != nil || strings.Contains(string(stat), ") Z ")
		})
	}
}

func TestRunErrorCarriesStderrNeverStdout(t *testing.T) {
	_, stderr, err := Run(context.Background(),
		[]string{"/bin/sh", "-c", "printf TOPSECRETKEYBYTES; echo 'tang: connection refused' >&2; exit 3"}, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "tang: connection refused") {
		t.Fatalf("err %v", err)
	}
	if strings.Contains(err.Error()+stderr, "TOPSECRET") {
		t.Fatal("stdout leaked into the error")
	}
	_, stderr, _ = Run(context.Background(), []string{"/bin/sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x >&2; exit 1"}, 5*time.Second)
	if len(stderr) > maxStderr+100 || !strings.Contains(stderr, "more bytes") {
		t.Fatalf("stderr not truncated: %d bytes", len(stderr))
	}
}

func TestStartFails(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct{ cmd, want string }{
		{"echo 'no tang server' >&2; exit 1", "no tang server"},
		{"echo hello", "KEK output is 6 bytes"},
		{"echo '" + kek.Header + "'", "no keys"},
		{"/nonexistent/kek-tool", "exit status 127"},
	} {
		err := startErr(Config{Command: tc.cmd, Timeout: time.Hour, CommandTimeout: 5 * time.Second, Log: log})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.cmd, err, tc.want)
		}
	}
	err := startErr(Config{Command: "sleep 60", Timeout: time.Hour, CommandTimeout: 300 * time.Millisecond, Log: log})
	if err == nil || !strings.Contains(err.Error(), "did not finish") {
		t.Errorf("hanging at start: %v", err)
	}
}

// The KEK command fails after start: keys stay usable until the timeout,
// are purged, and come back when the command works again. Each state
// change is logged exactly once.
func TestPurgeAfterTimeoutThenResume(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring")
	key := testbin.NewKey()
	testbin.WriteKeyring(t, path, key)
	const timeout = 2 * time.Second
	began := time.Now()
	s, logs := start(t, Config{Command: "cat " + path, Timeout: timeout, CommandTimeout: time.Second})
	os.Remove(path)

	waitFor(t, "a failed refresh", func() bool { return logs.count("KEK refresh failed;") > 0 })
	if primary(s) == "" {
		t.Fatal("purged at the first failure, before the timeout")
	}
	waitFor(t, "the purge", func() bool { return primary(s) == "" })
	if d := time.Since(began); d < timeout {
		t.Fatalf("purged after %v, before the %v timeout", d, timeout)
	}
	failed := s.Status().Failures
	waitFor(t, "more failed runs", func() bool { return s.Status().Failures >= failed+3 })
	if primary(s) != "" {
		t.Fatal("keys came back while the command still fails")
	}

	testbin.WriteKeyring(t, path, key)
	waitFor(t, "the keys to come back", func() bool { return primary(s) != "" })
	waitFor(t, "the restore to be logged", func() bool { return logs.count("KEK restored") > 0 })
	if got := primary(s); got != idOf(t, key) {
		t.Fatalf("restored %s", got)
	}
	for msg, want := range map[string]int{"KEK refresh failed;": 1, "KEK purged": 1, "KEK restored": 1, "KEK refresh failed again": 2} {
		if n := logs.count(msg); n != want && !(msg == "KEK refresh failed again" && n >= want) {
			t.Errorf("%q logged %d times:\n%s", msg, n, logs)
		}
	}
	if strings.Contains(logs.String(), base64.StdEncoding.EncodeToString(key)) {
		t.Fatal("key material in the log")
	}
}

// A refresh that hangs is killed; expiry does not wait for it. The first
// hung run is killed before the timeout (Validate sees to that), the retry
// hangs across it.
func TestHungRefreshIsPurgedOnTime(t *testing.T) {
	dir := t.TempDir()
	path, hang := filepath.Join(dir, "keyring"), filepath.Join(dir, "hang")
	testbin.WriteKeyring(t, path, testbin.NewKey())
	const timeout, commandTimeout = 4 * time.Second, 3 * time.Second
	began := time.Now()
	s, logs := start(t, Config{
		Command: fmt.Sprintf("if [ -e %s ]; then sleep 600; fi; cat %s", hang, path),
		Timeout: timeout, RefreshInterval: 500 * time.Millisecond, CommandTimeout: commandTimeout,
	})
	os.WriteFile(hang, nil, 0o600)
	waitFor(t, "the purge", func() bool { return primary(s) == "" })
	// Waiting for the retry would put it past timeout+commandTimeout/2.
	if d := time.Since(began); d > timeout+commandTimeout/2 {
		t.Fatalf("purge came %v after start; the hung run delayed it", d)
	}
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not kill the hung command")
	}
	if logs.count("KEK purged") != 1 {
		t.Fatalf("log:\n%s", logs)
	}
}

// Garbage from a later run is an error like any other: the cached keys
// keep serving, and the garbage (stdout) is not logged.
func TestGarbageOnRefreshKeepsServing(t *testing.T) {
	dir := t.TempDir()
	path, garbage := filepath.Join(dir, "keyring"), filepath.Join(dir, "garbage")
	key := testbin.NewKey()
	testbin.WriteKeyring(t, path, key)
	s, logs := start(t, Config{Command: fmt.Sprintf("if [ -e %s ]; then echo GARBAGE-ON-STDOUT; exit 0; fi; cat %s", garbage, path)})
	os.WriteFile(garbage, nil, 0o600)
	s.Refresh()
	waitFor(t, "the failed refresh", func() bool { return logs.count("KEK refresh failed;") == 1 })
	if !strings.Contains(logs.String(), "KEK output is 18 bytes") || strings.Contains(logs.String(), "GARBAGE") {
		t.Fatalf("log:\n%s", logs)
	}
	if primary(s) != idOf(t, key) {
		t.Fatal("cached keys were dropped")
	}
	s.Close()
	s.Close()
	if primary(s) != "" {
		t.Fatal("keys survive Close")
	}
}

// Requests read the keys while a slow refresh runs, without waiting for
// it; and when the refresh then drops a key (the oldest retired one, past
// maxRetired), the wipe waits for the requests in flight, which go on.
func TestSlowRefreshDoesNotBlockReaders(t *testing.T) {
	dir := t.TempDir()
	path, slow := filepath.Join(dir, "keyring"), filepath.Join(dir, "slow")
	wait, open := gate(t)
	first := testbin.NewKey()
	testbin.WriteKeyring(t, path, first)
	// The slow run waits at the gate while the readers count: no command
	// timeout may end it first (2 s did, under -race on a starved machine).
	s, _ := start(t, Config{Command: fmt.Sprintf("if [ -e %s ]; then read x < %s; fi; cat %s", slow, wait, path), CommandTimeout: time.Minute})
	for range maxRetired {
		k := testbin.NewKey()
		testbin.WriteKeyring(t, path, k)
		if err := s.RefreshAndWait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	oldest := s.keys.Load().set.Keys()[maxRetired]
	if oldest.KeyID != idOf(t, first) {
		t.Fatalf("the oldest key is %s", oldest.KeyID)
	}
	last := testbin.NewKey()
	testbin.WriteKeyring(t, path, last)
	os.WriteFile(slow, nil, 0o600)
	s.Refresh() // waits at the gate

	var reads atomic.Int64
	stop := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				readErr <- nil
				return
			default:
			}
			if _, _, err := s.Encrypt([]byte("dek")); err != nil {
				readErr <- err
				return
			}
			reads.Add(1)
		}
	}()
	// Readers get on while the command waits at the gate: they do not wait
	// for the run (else this would time out).
	waitFor(t, "reads during the run", func() bool { return reads.Load() >= 1000 })
	if primary(s) == idOf(t, last) {
		t.Fatal("the refresh finished before the command did")
	}
	os.Remove(slow)
	open()
	waitFor(t, "the refresh", func() bool { return primary(s) == idOf(t, last) })
	// The end of a later run follows the wipe of the dropped key, for
	// the race detector too.
	if err := s.RefreshAndWait(context.Background()); err != nil {
		t.Fatal(err)
	}
	at := reads.Load()
	waitFor(t, "reads after the drop", func() bool { return reads.Load() >= at+1000 })
	close(stop)
	if err := <-readErr; err != nil {
		t.Fatalf("a reader failed: %v", err)
	}
	if s.keys.Load().set.Lookup(oldest.ID) != nil {
		t.Fatal("the oldest retired key was not dropped")
	}
	// A wiped key has no cipher left: using it panics rather than
	// encrypt under zeros.
	wiped := func() (panicked bool) {
		defer func() { panicked = recover() != nil }()
		codec.NewSet([]*codec.Key{oldest}).Encrypt(codec.AESGCM, []byte("x"))
		return false
	}()
	if !wiped {
		t.Fatal("the dropped key was not wiped")
	}
}

func TestRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	a, b, c := testbin.NewKey(), testbin.NewKey(), testbin.NewKey()
	testbin.WriteKeyring(t, path, a)
	s, logs := start(t, Config{Command: "cat " + path})
	oldCT, _, err := s.Encrypt([]byte("dek under a"))
	if err != nil {
		t.Fatal(err)
	}

	// b becomes primary, a stays listed.
	testbin.WriteKeyring(t, path, b, a)
	s.Refresh()
	waitFor(t, "b to become primary", func() bool { return primary(s) == idOf(t, b) })
	newCT, _, _ := s.Encrypt([]byte("dek under b"))
	for ct, want := range map[string]string{string(oldCT): idOf(t, a), string(newCT): idOf(t, b)} {
		p, id, err := s.Decrypt([]byte(ct))
		if err != nil || id != want || !strings.HasPrefix(string(p), "dek under") {
			t.Fatalf("decrypt: %v", err)
		}
	}

	// a is no longer listed: it stays in memory for decrypt only.
	testbin.WriteKeyring(t, path, c, b)
	s.Refresh()
	waitFor(t, "c to become primary", func() bool { return primary(s) == idOf(t, c) })
	if p, _, err := s.Decrypt(oldCT); err != nil || string(p) != "dek under a" {
		t.Fatalf("retired key: %v", err)
	}
	want := []KeyInfo{{idOf(t, c), RolePrimary}, {idOf(t, b), RoleListed}, {idOf(t, a), RoleUnlisted}}
	if got := s.Status().Keys; !slices.Equal(got, want) {
		t.Fatalf("keys %v, want %v", got, want)
	}
	if n := logs.count("primary KEK changed"); n != 2 {
		t.Fatalf("%d rotations logged:\n%s", n, logs)
	}
}

func TestRetiredKeysAreBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring")
	testbin.WriteKeyring(t, path, testbin.NewKey())
	s, _ := start(t, Config{Command: "cat " + path})
	for i := 0; i < maxRetired+5; i++ {
		k := testbin.NewKey()
		testbin.WriteKeyring(t, path, k)
		s.Refresh()
		waitFor(t, "the new key", func() bool { return primary(s) == idOf(t, k) })
	}
	if n := len(s.Status().Keys); n != 1+maxRetired {
		t.Fatalf("%d keys in memory", n)
	}
}

func TestBackoff(t *testing.T) {
	s := &Source{cfg: Config{Timeout: time.Hour}}
	for n := 1; n <= 40; n++ {
		d := s.backoff(n)
		if d <= 0 || d > 30*time.Second {
			t.Fatalf("backoff(%d) = %v", n, d)
		}
		if n > 10 && d < 15*time.Second {
			t.Fatalf("backoff(%d) = %v, want near the cap", n, d)
		}
	}
	if d := (&Source{cfg: Config{RefreshInterval: time.Minute}}).refreshDelay(); d < 57*time.Second || d > time.Minute {
		t.Fatalf("refresh after %v for a 1m interval", d)
	}
}
