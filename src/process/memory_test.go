package process

import (
	"math"
	"os"
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
	for _, v := range []string{"GOGC", "GOMEMLIMIT"} {
		if old, set := os.LookupEnv(v); set {
			t.Cleanup(func() { os.Setenv(v, old) })
		}
		os.Unsetenv(v)
	}
	TuneGC()
	if got := debug.SetGCPercent(100); got != DefaultGCPercent {
		t.Errorf("GOGC unset: collector target %d, want %d", got, DefaultGCPercent)
	}
	if got := debug.SetMemoryLimit(-1); got != DefaultMemoryLimit {
		t.Errorf("GOMEMLIMIT unset: memory limit %d, want %d", got, DefaultMemoryLimit)
	}
	// The operator's values were applied by the runtime at start; they stay.
	t.Setenv("GOGC", "50")
	t.Setenv("GOMEMLIMIT", "100MiB")
	debug.SetGCPercent(50)
	debug.SetMemoryLimit(100 << 20)
	TuneGC()
	if got := debug.SetGCPercent(100); got != 50 {
		t.Errorf("GOGC=50: collector target %d, want 50 kept", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 100<<20 {
		t.Errorf("GOMEMLIMIT=100MiB: memory limit %d, want it kept", got)
	}
}
