// Package metrics holds the daemon's Prometheus metrics (docs/operating.md).
//
// Requests are counted on the hot path, so everything a request touches is
// resolved ahead of time: the label children of each method are looked up
// once, and a request costs a map lookup, two clock reads and a few atomic
// adds, with no allocation.
package metrics

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/src/keysource"
)

// Buckets, in seconds. A request is an AES operation plus gRPC: tens of
// microseconds, unless the machine is starved. The KEK command may call a
// key server over the network, so it gets seconds.
var (
	requestBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5, 2}
	commandBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
)

// Metrics is one daemon's metrics, in their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	requests  *prometheus.CounterVec
	latencies *prometheus.HistogramVec
	methods   map[string]*method

	commandRuns     map[keysource.Outcome]prometheus.Counter
	commandDuration map[keysource.Outcome]prometheus.Observer
	lastSuccess     atomic.Int64 // unix nanoseconds; 0 before the first success
	loaded          prometheus.Gauge
	keys            prometheus.Gauge
	keyInfo         *prometheus.GaugeVec
}

// method holds one RPC's series, one slot per gRPC code. Slots are filled
// on a code's first use, so only codes that happened are exported, yet
// each label lookup happens once.
type method struct {
	version, name string
	m             *Metrics
	codes         [codes.Unauthenticated + 1]atomic.Pointer[series]
}

type series struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

// New makes the metrics for a daemon of the given version serving the
// services in descs (each API version's KeyManagementService).
func New(version string, descs ...*grpc.ServiceDesc) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kms_requests_total",
			Help: "KMS API calls handled, by API version, method and gRPC status code.",
		}, []string{"api_version", "method", "code"}),
		latencies: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kms_request_duration_seconds",
			Help:    "Time spent handling KMS API calls (after decoding, before encoding), by API version, method and gRPC status code.",
			Buckets: requestBuckets,
		}, []string{"api_version", "method", "code"}),
		methods:         map[string]*method{},
		commandRuns:     map[keysource.Outcome]prometheus.Counter{},
		commandDuration: map[keysource.Outcome]prometheus.Observer{},
		loaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kms_kek_loaded",
			Help: "1 while a KEK is loaded and requests can be served, 0 while purged.",
		}),
		keys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kms_kek_keys",
			Help: "Keys held: the primary, older keys the command lists, and keys it stopped listing (kept until restart). 0 while purged.",
		}),
		keyInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kms_kek_key_info",
			Help: "1 for each key held, by key_id and role: primary (encrypts), listed (decrypts; the command prints it), unlisted (decrypts; kept after the command stopped printing it). None while purged.",
		}, []string{"key_id", "role"}),
	}
	runs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kms_kek_command_runs_total",
		Help: "Runs of the KEK command, by outcome: success, failed (non-zero exit, could not start), timeout (killed), invalid_output.",
	}, []string{"outcome"})
	durations := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kms_kek_command_duration_seconds",
		Help:    "How long runs of the KEK command took, by outcome.",
		Buckets: commandBuckets,
	}, []string{"outcome"})
	for _, o := range keysource.Outcomes {
		m.commandRuns[o] = runs.WithLabelValues(string(o))
		m.commandDuration[o] = durations.WithLabelValues(string(o))
	}
	for _, d := range descs {
		// "v2.KeyManagementService": the proto package is the API version.
		version, _, _ := strings.Cut(d.ServiceName, ".")
		for _, md := range d.Methods {
			mm := &method{version: version, name: md.MethodName, m: m}
			mm.series(codes.OK) // so rates have a zero to start from
			m.methods["/"+d.ServiceName+"/"+md.MethodName] = mm
		}
	}
	m.Registry.MustRegister(
		m.requests, m.latencies, runs, durations, m.loaded, m.keys, m.keyInfo,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kms_kek_last_success_timestamp_seconds",
			Help: "Unix time of the last successful run of the KEK command (0: none yet).",
		}, func() float64 { return float64(m.lastSuccess.Load()) / 1e9 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kms_kek_seconds_since_last_success",
			Help: "Seconds since the last successful run of the KEK command; the KEK is purged when this passes --timeout.",
		}, func() float64 {
			last := m.lastSuccess.Load()
			if last == 0 {
				return 0
			}
			return time.Since(time.Unix(0, last)).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kms_build_info",
			Help:        "Always 1; the labels say which kms is running.",
			ConstLabels: prometheus.Labels{"version": version, "go_version": runtime.Version()},
		}, func() float64 { return 1 }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (mm *method) series(c codes.Code) *series {
	if c > codes.Unauthenticated {
		c = codes.Unknown
	}
	if s := mm.codes[c].Load(); s != nil {
		return s
	}
	// Two first calls may race here; both get the same children.
	s := &series{
		count:   mm.m.requests.WithLabelValues(mm.version, mm.name, c.String()),
		latency: mm.m.latencies.WithLabelValues(mm.version, mm.name, c.String()),
	}
	mm.codes[c].Store(s)
	return s
}

// A Recorder is told of each call the interceptor counts, once it has
// run: the audit log. It shares the interceptor's clock readings, and a
// second interceptor would cost gRPC's chaining an allocation per call.
type Recorder interface {
	Record(ctx context.Context, req, resp any, code codes.Code, start time.Time, took time.Duration)
}

// UnaryInterceptor counts and times the KMS methods given to New, and
// tells rec of them unless it is nil; other services on the server (gRPC
// health) pass through uncounted.
func (m *Metrics) UnaryInterceptor(rec Recorder) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		mm := m.methods[info.FullMethod]
		if mm == nil {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		took := time.Since(start)
		code := status.Code(err)
		s := mm.series(code)
		s.latency.Observe(took.Seconds())
		s.count.Inc()
		if rec != nil {
			rec.Record(ctx, req, resp, code, start, took)
		}
		return resp, err
	}
}

// Settings exports the daemon's --timeout and --refresh-interval, so that
// alert rules can compare the time since the last success with them.
func (m *Metrics) Settings(timeout, refreshInterval time.Duration) {
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kms_kek_timeout_seconds",
			Help: "--timeout: the KEK is purged this long after the last successful run of the command.",
		}, func() float64 { return timeout.Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kms_kek_refresh_interval_seconds",
			Help: "--refresh-interval: how often the KEK command runs while it succeeds.",
		}, func() float64 { return refreshInterval.Seconds() }),
	)
}

// Connections exports open, the number of client connections open on the
// KMS socket, as kms_connections.
func (m *Metrics) Connections(open func() int) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kms_connections",
		Help: "Client connections open on the KMS socket.",
	}, func() float64 { return float64(open()) }))
}

// CommandRan records one run of the KEK command (keysource.Hooks).
func (m *Metrics) CommandRan(o keysource.Outcome, took time.Duration, end time.Time) {
	m.commandRuns[o].Inc()
	m.commandDuration[o].Observe(took.Seconds())
	if o == keysource.OutcomeSuccess {
		m.lastSuccess.Store(end.UnixNano())
	}
}

// KeysChanged records the keys now served, nil when purged (keysource.Hooks).
func (m *Metrics) KeysChanged(keys []keysource.KeyInfo) {
	m.keyInfo.Reset()
	for _, k := range keys {
		m.keyInfo.WithLabelValues(k.ID, string(k.Role)).Set(1)
	}
	m.keys.Set(float64(len(keys)))
	if keys == nil {
		m.loaded.Set(0)
		return
	}
	m.loaded.Set(1)
}
