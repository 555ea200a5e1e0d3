package drills

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/dev/bench/load"
)

// The KEK command fails for longer than --timeout: the cached KEK serves
// through the failed refreshes, then calls fail fast with Unavailable and
// Status errors, and within one retry interval of the command working
// again the daemon serves again; nothing written before is lost.
func TestKEKOutage(t *testing.T) {
	t.Parallel()
	// Below the daemon's 1m minimum through its hidden test flag, long
	// enough that failed refreshes (from 3/4 of it on) come before the
	// purge on a busy machine.
	timeout := time.Duration(scale(30, 120)) * time.Second
	const (
		// The command fails slowly, like an unreachable key server; a
		// call that waited on it would take at least this long.
		failTime = 3 * time.Second
		// Room for a busy machine.
		slack = 5 * time.Second
	)
	// keysource retries a failing command at least every timeout/8
	// (capped at 30s), plus the failing run that may be in flight.
	resumeLimit := min(timeout/8, 30*time.Second) + failTime + slack
	dir, sock := shortSock(t)
	ring := filepath.Join(dir, "keyring")
	writeKeyring(t, ring, testbin.NewKey())
	command := fmt.Sprintf(`if [ -e %[1]s ]; then cat %[1]s; else sleep %d; echo key server unreachable >&2; exit 1; fi`, ring, int(failTime.Seconds()))
	d := startKMS(t, sock, "--command", command, "--min-timeout", "1s", "--timeout", timeout.String(), "--command-timeout", "10s")
	loaded := time.Now() // the KEK was loaded just before
	ctx := context.Background()

	var objs store
	r := load.Run(ctx, 8, scale(500, 20000), func(ctx context.Context, _, seq int) error { return write(ctx, d.Client, &objs, seq) })
	if r.Failed() > 0 {
		t.Fatalf("writes before the outage failed: %v", r.Failures)
	}
	saved, err := os.ReadFile(ring)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(ring); err != nil {
		t.Fatal(err)
	}
	broken := time.Now()

	type event struct {
		start time.Time
		took  time.Duration
		code  codes.Code
	}
	var (
		mu     sync.Mutex
		events []event
		during store // written while the command was failing
	)
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		load.Run(loadCtx, scale(4, 32), math.MaxInt, func(ctx context.Context, _, seq int) error {
			start := time.Now()
			var err error
			if seq%3 == 0 {
				err = write(ctx, d.Client, &during, seq)
			} else {
				o, _ := objs.at(seq)
				err = read(ctx, d.Client, o)
			}
			took := time.Since(start)
			if ctx.Err() == nil {
				mu.Lock()
				events = append(events, event{start, took, status.Code(err)})
				mu.Unlock()
			}
			// Paced: the drill is about behaviour over a minute, not rate.
			time.Sleep(time.Duration(scale(10, 1)) * time.Millisecond)
			return err
		})
	})

	statusErr := func() error {
		_, err := d.V2.Status(ctx, &v2.StatusRequest{})
		return err
	}
	testbin.WaitFor(t, "purge", timeout+30*time.Second, func() bool { return statusErr() != nil })
	purged := time.Now()
	if code := status.Code(statusErr()); code != codes.Unavailable {
		t.Fatalf("Status while purged: %v; want Unavailable", code)
	}
	if purged.Sub(broken) < timeout/2 {
		t.Fatalf("purged %v after the command broke; the cached KEK should serve for the %v timeout", purged.Sub(broken), timeout)
	}
	time.Sleep(2 * time.Second) // calls keep failing meanwhile

	if err := os.WriteFile(ring, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	recovered := time.Now()
	testbin.WaitFor(t, "service after the command recovered", resumeLimit, func() bool { return statusErr() == nil })
	resumed := time.Now()
	time.Sleep(500 * time.Millisecond)
	stopLoad()
	wg.Wait()

	// After the first refresh must have failed (refresh is due at 3/4 of
	// the timeout, less up to 5% jitter, and a failure takes failTime).
	failing := loaded.Add(timeout*3/4 + failTime + time.Second)
	var cached, fast, afterResume int
	var unavailable []time.Duration
	for _, e := range events {
		switch {
		case e.code != codes.OK && e.code != codes.Unavailable:
			t.Fatalf("a call failed with %v; want only Unavailable, and only while purged", e.code)
		case e.code == codes.OK && e.start.After(purged) && e.start.Before(recovered):
			t.Fatalf("a call succeeded %v after the purge, before the command recovered", e.start.Sub(purged))
		case e.code == codes.Unavailable && e.start.Before(broken.Add(timeout/2)):
			t.Fatalf("a call failed %v after the command broke, long before the timeout", e.start.Sub(broken))
		case e.code == codes.OK && e.start.After(failing) && e.start.Before(purged.Add(-100*time.Millisecond)):
			cached++
		case e.code == codes.Unavailable:
			unavailable = append(unavailable, e.took)
			if e.took < failTime {
				fast++
			}
		case e.code == codes.OK && e.start.After(resumed):
			afterResume++
		}
	}
	slices.Sort(unavailable)
	switch {
	case cached == 0:
		t.Fatal("no call was served from the cached KEK while refreshes failed")
	case len(unavailable) == 0:
		t.Fatal("no call failed while purged")
	case fast < len(unavailable):
		t.Fatalf("%d of %d Unavailable calls took longer than the failing command (%v): they waited on it", len(unavailable)-fast, len(unavailable), failTime)
	case unavailable[len(unavailable)*99/100] > failTime/5:
		t.Fatalf("Unavailable calls are slow: p99 %v", unavailable[len(unavailable)*99/100])
	case afterResume == 0:
		t.Fatal("no call succeeded after service resumed")
	}

	all := append(objs.all(), during.all()...)
	readAll(t, d.Client, all)
	t.Logf("cached KEK served %d calls after refreshes began failing; purged %v after the command broke; %d Unavailable calls, p99 %v, max %v; resumed %v after the command recovered; %d objects intact",
		cached, purged.Sub(broken).Round(time.Second), len(unavailable), unavailable[len(unavailable)*99/100], unavailable[len(unavailable)-1], resumed.Sub(recovered).Round(time.Millisecond), len(all))
}
