package keysource

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/testbin"
)

type event struct {
	outcome Outcome // "" for KeysChanged
	keys    int     // -1 for purged
}

type recorder struct {
	mu     sync.Mutex
	events []event
}

func (r *recorder) CommandRan(o Outcome, took time.Duration, end time.Time) {
	if took <= 0 || end.After(time.Now()) {
		panic("CommandRan: bad timing")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{outcome: o})
}

func (r *recorder) KeysChanged(keys []KeyInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := -1
	if keys != nil {
		n = len(keys)
	}
	r.events = append(r.events, event{keys: n})
}

func (r *recorder) has(e event) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, got := range r.events {
		if got == e {
			return true
		}
	}
	return false
}

func TestHooksSeeRunsAndKeyChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, path, testbin.NewKey(), testbin.NewKey())
	rec := &recorder{}
	s, _ := start(t, Config{Command: "cat " + path, Hooks: rec})
	if !rec.has(event{outcome: OutcomeSuccess}) || !rec.has(event{keys: 2}) {
		t.Fatalf("after Start: %+v", rec.events)
	}

	for _, tc := range []struct {
		content string
		want    Outcome
	}{
		{"garbage", OutcomeInvalidOutput},
		{"", OutcomeFailed}, // file removed: cat fails
	} {
		if tc.content == "" {
			os.Remove(path)
		} else {
			os.WriteFile(path, []byte(tc.content), 0o600)
		}
		s.Refresh()
		waitFor(t, string(tc.want), func() bool { return rec.has(event{outcome: tc.want}) })
	}
	s.Close()
	if !rec.has(event{keys: -1}) {
		t.Fatalf("Close did not report the keys dropped: %+v", rec.events)
	}
}

func TestHooksSeeTimeoutAndPurge(t *testing.T) {
	rec := &recorder{}
	flag := filepath.Join(t.TempDir(), "hang")
	// Succeeds once, then hangs: the refresh is killed and the keys purged.
	// The first run must end within the command timeout however loaded the
	// machine is (500 ms did not, under -race beside two busy loops): hence
	// seconds, which the timeout and the purge then take.
	cmd := "if [ -e " + flag + " ]; then sleep 30; fi; : >" + flag + "; head -c 32 /dev/urandom"
	s, _ := start(t, Config{Command: cmd, Hooks: rec, Timeout: 8 * time.Second, CommandTimeout: 3 * time.Second})
	s.Refresh()
	waitFor(t, "a timeout", func() bool { return rec.has(event{outcome: OutcomeTimeout}) })
	waitFor(t, "the purge", func() bool { return rec.has(event{keys: -1}) })
	if primary(s) != "" {
		t.Fatal("KeysChanged(nil) while keys are served")
	}
}
