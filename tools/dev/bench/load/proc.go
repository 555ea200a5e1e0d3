package load

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Proc is what /proc says about a process at one moment.
type Proc struct {
	// CPU is user plus system time (utime+stime) of all its threads.
	CPU time.Duration
	// RSS is its resident set size in bytes.
	RSS int64
}

// ReadProc reads /proc/PID/stat and /proc/PID/status.
func ReadProc(pid int) (Proc, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Proc{}, err
	}
	cpu, err := parseStatCPU(stat)
	if err != nil {
		return Proc{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Proc{}, err
	}
	rss, err := parseStatusRSS(st)
	if err != nil {
		return Proc{}, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return Proc{CPU: cpu, RSS: rss}, nil
}

// parseStatCPU returns utime+stime, fields 14 and 15 of proc(5)'s stat.
// The command name (field 2) may hold spaces and parentheses, so fields
// are counted from the last ')'.
func parseStatCPU(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("no ')' in %q", stat)
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / time.Duration(clockTicks()), nil
}

func parseStatusRSS(status []byte) (int64, error) {
	for line := range strings.Lines(string(status)) {
		v, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return kb << 10, err
	}
	return 0, fmt.Errorf("no VmRSS line")
}

// clockTicks is sysconf(_SC_CLK_TCK), which Go cannot call without cgo:
// the kernel passes it to every process in the auxiliary vector as
// AT_CLKTCK. 100 is the value on every common Linux build.
var clockTicks = sync.OnceValue(func() int64 {
	const atClkTck = 17
	auxv, err := os.ReadFile("/proc/self/auxv")
	for ; err == nil && len(auxv) >= 16; auxv = auxv[16:] {
		if binary.NativeEndian.Uint64(auxv) == atClkTck {
			if v := int64(binary.NativeEndian.Uint64(auxv[8:])); v > 0 {
				return v
			}
		}
	}
	return 100
})
