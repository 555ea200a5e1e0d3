package server

import (
	"os"
	"runtime/debug"

	"google.golang.org/grpc"
)

// streamWorkers is how many goroutines stand ready to run calls. More
// calls at once than this still run, each on a goroutine of its own.
const streamWorkers = 64

// NewGRPCServer returns a gRPC server with the daemon's transport
// settings, then opts. tools/bench builds its do-nothing plugin with it
// too, so that the two differ only in the work they do per call.
func NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	// A KMS call is a few microseconds of work. By default gRPC starts a
	// goroutine per call, which then spends as long again growing its
	// stack through the handler path (golang/go#18138); standing workers
	// keep theirs grown.
	return grpc.NewServer(append([]grpc.ServerOption{grpc.NumStreamWorkers(streamWorkers)}, opts...)...)
}

// DefaultGCPercent is the collector's target when GOGC is not set.
const DefaultGCPercent = 400

// SetGCPercent sets the garbage collector's target to DefaultGCPercent
// unless the environment sets GOGC. The daemon's live heap is about a
// megabyte, so at Go's default (100) the collector starts a cycle every
// 4 MiB allocated, tens of times a second under load, and its fixed costs
// become a large part of each call's CPU. 400 spends about 12 MiB more
// memory on collecting a quarter as often.
func SetGCPercent() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(DefaultGCPercent)
	}
}
