package testbin

import (
	"testing"
	"time"
)

// WaitFor polls cond every 10ms until it holds, and fails the test if it
// still does not after limit. Deadlines are generous because CI machines
// are shared; assertions about when something happens belong elsewhere.
func WaitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
