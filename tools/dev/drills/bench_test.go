package drills

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/dev/bench/load"
)

// tools/dev/bench end to end at a small size: both servers as processes of
// their own, every phase, the table. The start-up storm runs at its full
// size (10,000 v1 decrypts from 64 callers) and must not lose a call.
// Speed targets are not asserted: they are the tool's output, for a quiet
// machine (README "Performance").
func TestBenchTool(t *testing.T) {
	t.Parallel()
	sockDir, _ := shortSock(t)
	cfg := load.Config{
		KMS:           testbin.KMS(t),
		NoopCommand:   []string{os.Args[0], "serve-noop"},
		Dir:           sockDir,
		Mode:          "aesgcm",
		Kinds:         load.AllKinds,
		Callers:       16,
		Requests:      scale(2000, 100000),
		Rounds:        2,
		Corpus:        100,
		KEKDelay:      time.Second,
		RefreshEvery:  100 * time.Millisecond,
		StormRequests: 10000,
		StormCallers:  64,
		RSSRequests:   scale(5000, 1000000),
	}
	rep, err := load.Bench(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rep.Print(&out)
	t.Log("\n" + out.String())
	if err := rep.Check(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*load.Side{&rep.KMS, &rep.Noop} {
		switch {
		case s.Steady.Requests != cfg.Rounds*cfg.Requests:
			t.Errorf("%s: %d steady requests, want %d", s.Name, s.Steady.Requests, cfg.Rounds*cfg.Requests)
		case s.SteadyCPU <= 0 || s.RSSBefore <= 0 || s.RSSAfter <= 0:
			t.Errorf("%s: no CPU or RSS figures from /proc: %v %d %d", s.Name, s.SteadyCPU, s.RSSBefore, s.RSSAfter)
		case s.Storm.Requests != cfg.StormRequests || !s.Restarted:
			t.Errorf("%s: storm made %d calls (restarted: %v)", s.Name, s.Storm.Requests, s.Restarted)
		}
	}
	if rep.KMS.Refresh == nil || rep.KMS.Refresh.Requests < cfg.Rounds*cfg.Requests || rep.KMS.RefreshRuns == 0 {
		t.Error("the refresh phase did not run, or no KEK command run ended in it")
	}
	for _, want := range []string{"throughput", "server CPU per request", "latency p99", "p99 during KEK refresh", "RSS after", "storm (after a restart)", "failed requests, all phases"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
}
