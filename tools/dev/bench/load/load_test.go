package load

import (
	"context"
	"errors"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/socket"
	"github.com/cmdkms/kms/src/testbin"
)

func TestRunMakesEachCallOnceAndCountsFailures(t *testing.T) {
	const n = 10000
	var mu sync.Mutex
	seen := map[int]int{}
	r := Run(context.Background(), 8, n, func(_ context.Context, _, seq int) error {
		mu.Lock()
		seen[seq]++
		mu.Unlock()
		switch {
		case seq%10 == 0:
			return status.Error(codes.Unavailable, "down")
		case seq%25 == 1:
			return ErrWrongPlaintext
		}
		return nil
	})
	if r.Requests != n || len(seen) != n || len(r.Latencies) != n {
		t.Fatalf("%d requests, %d distinct seqs, %d latencies; want %d", r.Requests, len(seen), len(r.Latencies), n)
	}
	for seq, k := range seen {
		if seq < 0 || seq >= n || k != 1 {
			t.Fatalf("seq %d made %d times", seq, k)
		}
	}
	want := map[string]int{"Unavailable": n / 10, ErrWrongPlaintext.Error(): n / 25}
	if len(r.Failures) != 2 || r.Failures["Unavailable"] != want["Unavailable"] || r.Failures[ErrWrongPlaintext.Error()] != want[ErrWrongPlaintext.Error()] {
		t.Fatalf("failures %v, want %v", r.Failures, want)
	}
	if r.Failed() != n/10+n/25 {
		t.Fatalf("Failed() = %d", r.Failed())
	}
}

func TestRunEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var canceled atomic.Bool
	var late atomic.Int64
	r := Run(ctx, 4, math.MaxInt, func(_ context.Context, _, seq int) error {
		if canceled.Load() {
			late.Add(1)
		}
		if seq == 1000 {
			cancel()
			canceled.Store(true)
		}
		return nil
	})
	// Each of the other callers may be past its check of ctx when it
	// ends, so may make one call more; none makes two.
	if r.Requests < 1001 || late.Load() > 3 {
		t.Fatalf("%d requests, %d begun after the cancel at the 1001st; want >= 1001 and <= 3", r.Requests, late.Load())
	}
}

func TestPercentilesAndMerge(t *testing.T) {
	a, b := &Result{Elapsed: time.Second}, &Result{Elapsed: time.Second}
	for i := 1; i <= 100; i++ {
		if i%2 == 0 {
			a.Latencies = append(a.Latencies, time.Duration(i)*time.Millisecond)
		} else {
			b.Latencies = append(b.Latencies, time.Duration(i)*time.Millisecond)
		}
	}
	a.Requests, b.Requests = 50, 50
	b.Failures = map[string]int{"Internal": 3}
	a.Merge(b)
	for p, want := range map[float64]time.Duration{0.5: 50 * time.Millisecond, 0.99: 99 * time.Millisecond, 1: 100 * time.Millisecond} {
		if got := a.Percentile(p); got != want {
			t.Errorf("p%v = %v, want %v", p*100, got, want)
		}
	}
	if a.Requests != 100 || a.PerSecond() != 50 || a.Failed() != 3 {
		t.Fatalf("merged: %d requests, %v/s, %d failed", a.Requests, a.PerSecond(), a.Failed())
	}
	if (&Result{}).Percentile(0.99) != 0 {
		t.Fatal("percentile of nothing")
	}
}

func TestProcParsing(t *testing.T) {
	// The command name may hold spaces and parentheses.
	stat := "123 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0 99 1000 50"
	cpu, err := parseStatCPU([]byte(stat))
	if want := 400 * time.Second / time.Duration(clockTicks()); err != nil || cpu != want {
		t.Fatalf("cpu %v, %v; want %v", cpu, err, want)
	}
	if _, err := parseStatCPU([]byte("123 (x S 1")); err == nil {
		t.Fatal("accepted a stat without ')'")
	}
	rss, err := parseStatusRSS([]byte("Name:\tkms\nVmRSS:\t   20480 kB\nThreads: 5\n"))
	if err != nil || rss != 20<<20 {
		t.Fatalf("rss %d, %v", rss, err)
	}
	if _, err := parseStatusRSS([]byte("Name:\tkms\n")); err == nil {
		t.Fatal("accepted a status without VmRSS")
	}
}

func TestReadProcSeesCPUTime(t *testing.T) {
	before, err := ReadProc(os.Getpid())
	if err != nil || before.RSS <= 0 {
		t.Fatalf("%+v, %v", before, err)
	}
	// Burn CPU until /proc shows it, with a bound in case it never does.
	deadline := time.Now().Add(10 * time.Second)
	for after := before; after.CPU <= before.CPU; after, _ = ReadProc(os.Getpid()) {
		if time.Now().After(deadline) {
			t.Fatal("10s of spinning did not show in /proc/PID/stat")
		}
		for i := range 1000000 {
			sink ^= i
		}
	}
}

// sink keeps the spinning loop from being optimised away.
var sink int

// serve runs gs on a unix socket in a short temp dir, the socket made by
// the daemon's own socket.Listen, and connects a Client to it.
func serve(t testing.TB, gs *grpc.Server) *Client {
	return serveListener(t, gs, func(l net.Listener) net.Listener { return l })
}

// serveListener is serve with the listener wrapped by wrap.
func serveListener(t testing.TB, gs *grpc.Server, wrap func(net.Listener) net.Listener) *Client {
	sock := filepath.Join(testbin.ShortDir(t), "s.sock")
	l, err := socket.Listen("unix://"+sock, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(wrap(l))
	t.Cleanup(gs.Stop)
	c, err := Dial("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// serveServices serves s1 and s2 (see serve).
func serveServices(t testing.TB, s1 v1beta1.KeyManagementServiceServer, s2 v2.KeyManagementServiceServer) *Client {
	gs := grpc.NewServer()
	v1beta1.RegisterKeyManagementServiceServer(gs, s1)
	v2.RegisterKeyManagementServiceServer(gs, s2)
	return serve(t, gs)
}

// lyingV1 answers decrypts with someone else's bytes.
type lyingV1 struct{ noopV1 }

func (lyingV1) Decrypt(_ context.Context, r *v1beta1.DecryptRequest) (*v1beta1.DecryptResponse, error) {
	p := append([]byte(nil), r.Cipher...)
	p[0] ^= 1
	return &v1beta1.DecryptResponse{Plain: p}, nil
}

func TestWorkloadChecksAnswers(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		v1   v1beta1.KeyManagementServiceServer
		// wrong is the expected number of wrong answers per len(AllKinds) calls
		wrong int
	}{{"noop", noopV1{}, 0}, {"lying", lyingV1{}, 1}} {
		c := serveServices(t, tc.v1, noopV2{})
		corpus, err := NewCorpus(ctx, c, 10)
		if err != nil {
			t.Fatal(err)
		}
		const n = 100 * 5
		r := Run(ctx, 8, n, corpus.Workload(c, AllKinds))
		if r.Requests != n || r.Failed() != tc.wrong*n/len(AllKinds) || r.Failures[ErrWrongPlaintext.Error()] != r.Failed() {
			t.Errorf("%s: %d requests, failures %v", tc.name, r.Requests, r.Failures)
		}
	}
}

func TestParseKinds(t *testing.T) {
	k, err := ParseKinds("v1dec, status")
	if err != nil || len(k) != 2 || k[0] != V1Decrypt || k[1] != Status {
		t.Fatalf("%v %v", k, err)
	}
	if _, err := ParseKinds("v1dec,v3dec"); err == nil || !strings.Contains(err.Error(), "v3dec") {
		t.Fatalf("v3dec: %v", err)
	}
}

func side(name string, perReq, lat time.Duration, failed int) Side {
	r := &Result{Requests: 1000, Elapsed: time.Second, Failures: map[string]int{}}
	for range 1000 {
		r.Latencies = append(r.Latencies, lat)
	}
	if failed > 0 {
		r.Failures["Internal"] = failed
	}
	return Side{Name: name, Steady: r, SteadyCPU: perReq * 1000}
}

func TestReportJudgesTargets(t *testing.T) {
	rep := &Report{Config: Config{Callers: 64, Kinds: AllKinds, Mode: "aesgcm", Rounds: 1, Requests: 1000}}
	rep.KMS = side("kms", 12*time.Microsecond, time.Millisecond, 0)
	rep.Noop = side("do-nothing", 10*time.Microsecond, 6*time.Millisecond, 0)
	var out strings.Builder
	rep.Print(&out)
	verdicts := map[string]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			verdicts[strings.SplitN(strings.TrimLeft(line, " "), "  ", 2)[0]] = f[len(f)-1]
		}
	}
	for figure, want := range map[string]string{
		"server CPU per request":      "NO",  // 1.20 > 1.10
		"throughput, requests/s":      "yes", // 1.00 >= 0.95
		"latency p99":                 "yes", // 1ms < 5ms
		"failed requests, all phases": "yes",
	} {
		if verdicts[figure] != want {
			t.Errorf("%s: %q, want %q\n%s", figure, verdicts[figure], want, out.String())
		}
	}
	if !strings.Contains(out.String(), "All targets met: NO") || rep.Check() != nil {
		t.Errorf("summary or Check wrong:\n%s", out.String())
	}

	// The last variant (both flags) is judged against plain kms.
	rep.KMS = side("kms", 10*time.Microsecond, time.Millisecond, 0)
	for _, tc := range []struct {
		both time.Duration
		want string
	}{{10900 * time.Nanosecond, "All targets met: yes"}, {11200 * time.Nanosecond, "All targets met: NO"}} {
		rep.Variants = []Side{side("kms-audit-log", 12*time.Microsecond, time.Millisecond, 0), side("kms-both", tc.both, time.Millisecond, 0)}
		out.Reset()
		rep.Print(&out)
		if !strings.Contains(out.String(), tc.want) || !strings.Contains(out.String(), "<= 1.10 x kms") {
			t.Errorf("both at %v per request, kms at 10µs: want %q\n%s", tc.both, tc.want, out.String())
		}
	}
	// FIPS 140-only mode, of kms or of the FIPS build (--kms-fips), is
	// judged against plain kms, with its own target: 10.4/10 = 1.04 <= 1.05,
	// 10.6/10 = 1.06 > 1.05.
	for _, name := range []string{"kms-fips140-only", "kms_fips-fips140-only"} {
		for _, tc := range []struct {
			fips time.Duration
			want string
		}{{10400 * time.Nanosecond, "All targets met: yes"}, {10600 * time.Nanosecond, "All targets met: NO"}} {
			rep.Variants = []Side{side(name, tc.fips, time.Millisecond, 0)}
			out.Reset()
			rep.Print(&out)
			if !strings.Contains(out.String(), tc.want) || !strings.Contains(out.String(), "<= 1.05 x kms") {
				t.Errorf("%s at %v per request, kms at 10µs: want %q\n%s", name, tc.fips, tc.want, out.String())
			}
		}
	}
	rep.Variants = []Side{side("kms-audit-log", time.Microsecond, time.Millisecond, 1)}
	if err := rep.Check(); !errors.Is(err, ErrFailures) {
		t.Fatalf("Check with a variant's failures: %v", err)
	}
	rep.Variants = nil
	rep.Noop = side("do-nothing", 10*time.Microsecond, time.Millisecond, 2)
	if err := rep.Check(); !errors.Is(err, ErrFailures) {
		t.Fatalf("Check with failures: %v", err)
	}
}
