package metrics

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/keysource"
)

func newMetrics() *Metrics {
	return New("test", &v1beta1.KeyManagementService_ServiceDesc, &v2.KeyManagementService_ServiceDesc)
}

var (
	encryptInfo = &grpc.UnaryServerInfo{FullMethod: v2.KeyManagementService_Encrypt_FullMethodName}
	errPurged   = status.Error(codes.Unavailable, "purged")
	okHandler   = func(context.Context, any) (any, error) { return nil, nil }
	failHandler = func(context.Context, any) (any, error) { return nil, errPurged }
)

func TestInterceptorCounts(t *testing.T) {
	m := newMetrics()
	ic := m.UnaryInterceptor(nil)
	for range 3 {
		ic(context.Background(), nil, encryptInfo, okHandler)
	}
	ic(context.Background(), nil, encryptInfo, failHandler)
	ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/grpc.health.v1.Health/Check"}, okHandler)
	custom := func(context.Context, any) (any, error) { return nil, status.Error(codes.Code(99), "odd") }
	ic(context.Background(), nil, encryptInfo, custom)

	for _, c := range []struct {
		code string
		want float64
	}{{"OK", 3}, {"Unavailable", 1}, {"Unknown", 1}} {
		if got := testutil.ToFloat64(m.requests.WithLabelValues("v2", "Encrypt", c.code)); got != c.want {
			t.Errorf("Encrypt %s: %v, want %v", c.code, got, c.want)
		}
	}
	// The health call is not counted; each KMS method has its OK series
	// from the start, and only codes that happened have series.
	if got := testutil.CollectAndCount(m.requests); got != 6+2 {
		t.Errorf("%d request series, want 6 methods x OK + 2 error codes", got)
	}
	if got := testutil.CollectAndCount(m.latencies); got != 8 {
		t.Errorf("%d latency series, want 8", got)
	}
}

// The request path must not allocate: a benchmark holds the daemon to
// ≤ 1.10× the CPU per request of a plugin that does nothing.
func TestInterceptorDoesNotAllocate(t *testing.T) {
	ic := newMetrics().UnaryInterceptor(nil)
	for name, h := range map[string]grpc.UnaryHandler{"ok": okHandler, "error": failHandler} {
		ic(context.Background(), nil, encryptInfo, h) // first use of a code resolves its series
		if n := testing.AllocsPerRun(1000, func() { ic(context.Background(), nil, encryptInfo, h) }); n != 0 {
			t.Errorf("%s: %v allocations per request", name, n)
		}
	}
}

func BenchmarkInterceptor(b *testing.B) {
	ic := newMetrics().UnaryInterceptor(nil)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ic(ctx, nil, encryptInfo, okHandler)
		}
	})
}

func TestKEKMetrics(t *testing.T) {
	m := newMetrics()
	end := time.Now().Add(-3 * time.Second)
	m.CommandRan(keysource.OutcomeSuccess, 200*time.Millisecond, end)
	m.CommandRan(keysource.OutcomeTimeout, time.Second, time.Now())
	m.CommandRan(keysource.OutcomeInvalidOutput, time.Millisecond, time.Now())
	m.KeysChanged([]keysource.KeyInfo{{ID: "kek1-a", Role: keysource.RolePrimary}, {ID: "kek1-b", Role: keysource.RoleUnlisted}})

	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, s := range mf.Metric {
			name := mf.GetName()
			for _, l := range s.Label {
				name += "/" + l.GetValue()
			}
			switch {
			case s.Counter != nil:
				got[name] = s.Counter.GetValue()
			case s.Gauge != nil:
				got[name] = s.Gauge.GetValue()
			case s.Histogram != nil:
				got[name] = float64(s.Histogram.GetSampleCount())
			}
		}
	}
	for name, want := range map[string]float64{
		"kms_kek_command_runs_total/success":            1,
		"kms_kek_command_runs_total/timeout":            1,
		"kms_kek_command_runs_total/failed":             0,
		"kms_kek_command_runs_total/invalid_output":     1,
		"kms_kek_command_duration_seconds/success":      1,
		"kms_kek_last_success_timestamp_seconds":        float64(end.UnixNano()) / 1e9,
		"kms_kek_loaded":                                1,
		"kms_kek_keys":                                  2,
		"kms_kek_key_info/kek1-a/primary":               1,
		"kms_kek_key_info/kek1-b/unlisted":              1,
		"kms_build_info/" + runtime.Version() + "/test": 1,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	if s := got["kms_kek_seconds_since_last_success"]; s < 3 || s > 60 {
		t.Errorf("seconds since last success = %v, want about 3", s)
	}

	m.KeysChanged(nil)
	if testutil.ToFloat64(m.loaded) != 0 || testutil.ToFloat64(m.keys) != 0 || testutil.CollectAndCount(m.keyInfo) != 0 {
		t.Error("purge did not zero kms_kek_loaded and kms_kek_keys, or left kms_kek_key_info series")
	}
	// Every name follows the conventions (units, _total on counters).
	if problems, err := testutil.GatherAndLint(m.Registry); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}
