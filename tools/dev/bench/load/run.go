// Package load drives KMS plugins over their unix sockets with concurrent
// callers and measures them: latency as the caller sees it, CPU time and
// memory as the server process's /proc shows them. tools/dev/bench and the
// reliability drills (tools/dev/drills) both use it.
package load

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"
)

// Op makes request number seq from caller and returns its error.
type Op func(ctx context.Context, caller, seq int) error

// ErrWrongPlaintext is what an Op returns for a decrypt that answered
// with other bytes than were encrypted: never acceptable.
var ErrWrongPlaintext = errors.New("decrypt returned other bytes than were encrypted")

// Result is what one Run saw.
type Result struct {
	Requests int
	Elapsed  time.Duration
	// Latencies of all requests, failed ones included, sorted.
	Latencies []time.Duration
	// Failures counts failed requests by gRPC code name, or by
	// ErrWrongPlaintext's text.
	Failures map[string]int
}

// Run makes requests calls of op from callers goroutines, or fewer if ctx
// ends first. Calls are numbered 0..requests-1 across all callers, so an
// Op can map seq to an object deterministically.
func Run(ctx context.Context, callers, requests int, op Op) *Result {
	var next atomic.Int64
	lat := make([][]time.Duration, callers)
	fails := make([]map[string]int, callers)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range callers {
		// Bounded: open-ended runs (requests = MaxInt) end by ctx.
		lat[c] = make([]time.Duration, 0, min(requests/callers+1, 1<<14))
		fails[c] = map[string]int{}
		wg.Go(func() {
			for ctx.Err() == nil {
				seq := int(next.Add(1) - 1)
				if seq >= requests {
					return
				}
				t := time.Now()
				err := op(ctx, c, seq)
				lat[c] = append(lat[c], time.Since(t))
				if err != nil {
					fails[c][failureName(err)]++
				}
			}
		})
	}
	wg.Wait()
	r := &Result{Elapsed: time.Since(start), Failures: map[string]int{}}
	for c := range callers {
		r.Latencies = append(r.Latencies, lat[c]...)
		for k, n := range fails[c] {
			r.Failures[k] += n
		}
	}
	slices.Sort(r.Latencies)
	r.Requests = len(r.Latencies)
	return r
}

func failureName(err error) string {
	if errors.Is(err, ErrWrongPlaintext) {
		return ErrWrongPlaintext.Error()
	}
	return status.Code(err).String()
}

// Failed is the number of requests that failed.
func (r *Result) Failed() int {
	n := 0
	for _, v := range r.Failures {
		n += v
	}
	return n
}

// PerSecond is the request rate over the whole run.
func (r *Result) PerSecond() float64 {
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Percentile returns the latency below which a fraction p of requests
// finished (nearest rank); 0 with no requests.
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(p*float64(len(r.Latencies))+0.5) - 1
	return r.Latencies[min(max(i, 0), len(r.Latencies)-1)]
}

// Max is the slowest request.
func (r *Result) Max() time.Duration { return r.Percentile(1) }

// Merge folds o into r, as if both had run one after the other.
func (r *Result) Merge(o *Result) {
	r.Requests += o.Requests
	r.Elapsed += o.Elapsed
	r.Latencies = append(r.Latencies, o.Latencies...)
	slices.Sort(r.Latencies)
	if r.Failures == nil {
		r.Failures = map[string]int{}
	}
	for k, n := range o.Failures {
		r.Failures[k] += n
	}
}
