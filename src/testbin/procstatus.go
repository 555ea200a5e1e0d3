package testbin

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// MaxDaemonRSS is the most memory the daemon may hold, hostile clients or
// not: half the 128Mi limit of the static pod (release/deploy), above which
// the kubelet kills it and every API server write fails.
const MaxDaemonRSS = 64 << 20

// ProcStatus returns a size field of /proc/PID/status in bytes, e.g.
// "VmRSS" (resident now), "VmHWM" (the peak resident size) or "VmLck"
// (locked in memory).
func ProcStatus(t testing.TB, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/status %s: %v", pid, field, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}
