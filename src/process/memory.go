// Package process sets what the kms process needs of its runtime and its
// kernel before it serves: the garbage collector's targets, protection of
// key material (not dumpable, no core files, memory locked against swap),
// and, as PID 1 in a container, reaping orphans.
package process

import (
	"os"
	"runtime/debug"
)

const (
	// DefaultGCPercent is the collector's target when GOGC is not set.
	// The daemon's live heap is about a megabyte, so at Go's default (100)
	// the collector starts a cycle every 4 MiB allocated, tens of times a
	// second under load, and its fixed costs become a large part of each
	// call's CPU. 400 spends about 12 MiB more memory on collecting a
	// quarter as often.
	DefaultGCPercent = 400
	// DefaultMemoryLimit is the runtime's soft memory limit when GOMEMLIMIT
	// is not set. GOGC=400 lets the heap grow to five times what is live;
	// when much is live (clients that never read their answers, up to
	// the transport's limits), the limit makes the collector work harder
	// instead, so RSS stays within a static pod's memory limit.
	DefaultMemoryLimit = 48 << 20
)

// TuneGC applies DefaultGCPercent and DefaultMemoryLimit, each unless the
// environment sets its own (GOGC, GOMEMLIMIT), which the runtime has
// already applied.
func TuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(DefaultGCPercent)
	}
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
		debug.SetMemoryLimit(DefaultMemoryLimit)
	}
}
