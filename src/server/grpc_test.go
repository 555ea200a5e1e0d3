package server

import (
	"os"
	"runtime/debug"
	"testing"
)

func TestSetGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	if v, set := os.LookupEnv("GOGC"); set {
		t.Cleanup(func() { os.Setenv("GOGC", v) })
	}
	os.Unsetenv("GOGC")
	SetGCPercent()
	if got := debug.SetGCPercent(100); got != DefaultGCPercent {
		t.Errorf("GOGC unset: collector target %d, want %d", got, DefaultGCPercent)
	}
	// The operator's GOGC was applied by the runtime at start; it stays.
	t.Setenv("GOGC", "50")
	debug.SetGCPercent(50)
	SetGCPercent()
	if got := debug.SetGCPercent(100); got != 50 {
		t.Errorf("GOGC=50: collector target %d, want 50 kept", got)
	}
}
