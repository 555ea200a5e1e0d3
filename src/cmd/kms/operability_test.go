package main

// Health, metrics and `kms check`, against the real binary: the HTTP
// endpoints are scraped over TCP and parsed as Prometheus text, and the
// gRPC health service is called over the KMS socket.

import (
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
)

var healthAddrRE = regexp.MustCompile(`serving /healthz, /readyz and /metrics" address=(\S+)`)

// healthURL is the base URL the daemon logged for --health-address.
func healthURL(t *testing.T, d *daemon) string {
	t.Helper()
	m := healthAddrRE.FindStringSubmatch(d.Stderr())
	if m == nil {
		t.Fatalf("no health listener in the log:\n%s", d.Stderr())
	}
	return "http://" + m[1]
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

type scraped map[string]*dto.MetricFamily

func scrape(t *testing.T, base string) scraped {
	t.Helper()
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v\n%s", err, body)
	}
	return mfs
}

// find returns the series of name whose labels include labels ("k=v" ...).
func (s scraped) find(t *testing.T, name string, labels ...string) *dto.Metric {
	t.Helper()
	mf := s[name]
	if mf == nil {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range mf.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	return nil
}

// value is a counter's or gauge's value, or a histogram's sample count;
// a series that does not exist (yet) is 0.
func (s scraped) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	m := s.find(t, name, labels...)
	switch {
	case m == nil:
		return 0
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	t.Fatalf("%s: unexpected type", name)
	return 0
}

func healthCheck(t *testing.T, sock, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	conn := testbin.Dial(t, sock)
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("health Check(%q): %v", service, err)
	}
	return resp.Status
}

// One daemon through its whole life as an operator sees it: ready, counted
// requests, health over gRPC, then the command breaks (purge: readyz 503,
// NOT_SERVING, kek_loaded 0, requests Unavailable), then it works again.
func TestHealthAndMetrics(t *testing.T) {
	ctx := context.Background()
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	k1, k2 := testbin.NewKey(), testbin.NewKey()
	testbin.WriteKeyring(t, ring, k1, k2)
	const timeout = 6 * time.Second
	d := startDaemon(t, sock, "--command", "cat "+ring, "--health-address", "127.0.0.1:0",
		"--min-timeout", "1s", "--timeout", timeout.String(), "--command-timeout", "3s")
	base := healthURL(t, d)

	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	st := keyStatus(t, d)
	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, st.KeyId) {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	for _, svc := range []string{"", "v1beta1.KeyManagementService", "v2.KeyManagementService"} {
		if s := healthCheck(t, sock, svc); s != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %q: %v", svc, s)
		}
	}

	m := scrape(t, base)
	for name, want := range map[string]float64{"kms_kek_loaded": 1, "kms_kek_keys": 2, "kms_build_info": 1,
		"kms_kek_timeout_seconds": timeout.Seconds(), "kms_kek_refresh_interval_seconds": timeout.Seconds() / 5} {
		if got := m.value(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// The first run, and on a slow machine perhaps a refresh (every 1.2 s).
	if got := m.value(t, "kms_kek_command_runs_total", "outcome=success"); got < 1 {
		t.Errorf("successful runs %v, want at least 1", got)
	}
	for id, role := range map[string]string{keyID(k1): "primary", keyID(k2): "listed"} {
		if got := m.value(t, "kms_kek_key_info", "key_id="+id, "role="+role); got != 1 {
			t.Errorf("kms_kek_key_info{key_id=%s,role=%s} = %v, want 1", id, role, got)
		}
	}
	if got := m.value(t, "kms_kek_seconds_since_last_success"); got <= 0 || got > 60 {
		t.Errorf("kms_kek_seconds_since_last_success = %v", got)
	}
	before := m.value(t, "kms_requests_total", "api_version=v2", "method=Encrypt", "code=OK")

	const n = 25
	for range n {
		enc, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed"), Uid: "u"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "u"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: []byte("x"), KeyId: "nope", Uid: "u"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("unknown key id: %v", err)
	}
	m = scrape(t, base)
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"api_version=v2", "method=Encrypt", "code=OK"}, before + n},
		{[]string{"api_version=v2", "method=Decrypt", "code=OK"}, n},
		{[]string{"api_version=v2", "method=Decrypt", "code=FailedPrecondition"}, 1},
		{[]string{"api_version=v1beta1", "method=Encrypt", "code=OK"}, 0},
	} {
		if got := m.value(t, "kms_requests_total", c.labels...); got != c.want {
			t.Errorf("kms_requests_total%v = %v, want %v", c.labels, got, c.want)
		}
		if got := m.value(t, "kms_request_duration_seconds", c.labels...); got != c.want {
			t.Errorf("kms_request_duration_seconds%v count = %v, want %v", c.labels, got, c.want)
		}
	}
	if m.find(t, "kms_requests_total", "api_version=v1beta1", "method=Encrypt", "code=OK") == nil {
		t.Error("the v1beta1 series should exist at 0 from the start")
	}

	// The command breaks: keys stay until the timeout, then are purged.
	os.Remove(ring)
	d.Signal(syscall.SIGHUP)
	testbin.WaitFor(t, "a failed run", 3*timeout, func() bool {
		return scrape(t, base).value(t, "kms_kek_command_runs_total", "outcome=failed") >= 1
	})
	testbin.WaitFor(t, "the purge", 3*timeout, func() bool { return scrape(t, base).value(t, "kms_kek_loaded") == 0 })
	m = scrape(t, base)
	if got := m.value(t, "kms_kek_keys"); got != 0 {
		t.Errorf("kms_kek_keys after purge = %v", got)
	}
	if got := m.value(t, "kms_kek_seconds_since_last_success"); got < timeout.Seconds() {
		t.Errorf("purged after only %vs without success", got)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no KEK loaded") {
		t.Fatalf("/readyz while purged: %d %q", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz while purged: %d (the process is up)", code)
	}
	if s := healthCheck(t, sock, "v2.KeyManagementService"); s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while purged: %v", s)
	}
	if _, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("x"), Uid: "u"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Encrypt while purged: %v", err)
	}
	if _, err := d.v2.Status(ctx, &v2.StatusRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Status while purged: %v", err)
	}
	m = scrape(t, base)
	if got := m.value(t, "kms_requests_total", "api_version=v2", "method=Status", "code=Unavailable"); got != 1 {
		t.Errorf("Status Unavailable count %v, want 1", got)
	}

	// The command works again.
	testbin.WriteKeyring(t, ring, k1, k2)
	d.Signal(syscall.SIGHUP)
	testbin.WaitFor(t, "the keys back", 3*timeout, func() bool { return scrape(t, base).value(t, "kms_kek_loaded") == 1 })
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz after resume: %d", code)
	}
	if s := healthCheck(t, sock, ""); s != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after resume: %v", s)
	}
	if got := scrape(t, base).value(t, "kms_kek_seconds_since_last_success"); got > timeout.Seconds() {
		t.Errorf("kms_kek_seconds_since_last_success after resume = %v", got)
	}

	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}
	logs := d.Stderr()
	for msg, want := range map[string]int{"KEK purged": 1, "KEK restored": 1, "KEK loaded": 1} {
		if got := strings.Count(logs, msg); got != want {
			t.Errorf("%q logged %d times, want once per change:\n%s", msg, got, logs)
		}
	}
	for _, k := range [][]byte{k1, k2} {
		if strings.Contains(logs, base64.StdEncoding.EncodeToString(k)) {
			t.Fatal("key material in the log")
		}
	}
}

// A taken --health-address fails the start before the command runs.
func TestHealthAddressInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := testbin.ShortDir(t)
	ran := filepath.Join(dir, "ran")
	code, out := runToExit(t, "--command", "touch "+ran, "--endpoint", "unix://"+dir+"/kms.sock", "--health-address", l.Addr().String())
	if code != 1 || !strings.Contains(out, "--health-address") || !strings.Contains(out, "address already in use") {
		t.Fatalf("exit %d: %s", code, out)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the command ran although the daemon could not start")
	}
	if _, err := os.Stat(dir + "/kms.sock"); !os.IsNotExist(err) {
		t.Fatal("the socket was left behind")
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	ring := filepath.Join(dir, "keyring")
	k1, k2 := testbin.NewKey(), testbin.NewKey()
	testbin.WriteKeyring(t, ring, k1, k2)
	r, err := kek.Parse([]byte("kms-keyring v1\n" + base64.StdEncoding.EncodeToString(k1) + "\n" + base64.StdEncoding.EncodeToString(k2) + "\n"))
	if err != nil {
		t.Fatal(err)
	}

	var stdout, stderr strings.Builder
	cmd := exec.Command(testbin.KMS(t), "check", "--command", "echo warming up >&2; cat "+ring)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"ok: text keyring with 2 key(s)", r.Keys[0].ID.String() + "  32 bytes  primary", r.Keys[1].ID.String() + "  32 bytes  decrypt only"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr.String(), "warming up") {
		t.Errorf("the command's stderr was not shown: %q", stderr.String())
	}
	for _, k := range [][]byte{k1, k2} {
		if strings.Contains(out+stderr.String(), base64.StdEncoding.EncodeToString(k)) {
			t.Fatal("key material printed")
		}
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"check", "--command", "head -c 16 /dev/zero"}, 0, "ok: raw key (2018 format) with 1 key(s)"},
		{[]string{"check", "--command", "echo nope"}, 1, "FAILED: KEK output is 5 bytes"},
		{[]string{"check", "--command", "echo tang down >&2; exit 3"}, 1, "tang down"},
		{[]string{"check", "--command", "sleep 5", "--command-timeout", "200ms"}, 1, "did not finish within 200ms"},
		{[]string{"check"}, 2, "--command is required"},
		{[]string{"check", "--command", "true", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"check", "--help"}, 0, "kms check --command CMD"},
	} {
		code, out := runToExit(t, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%q: exit %d, %q; want %d and %q", tc.args, code, out, tc.code, tc.want)
		}
		if strings.Contains(out, "serving") {
			t.Errorf("%q started a server", tc.args)
		}
	}
	if code, out := runToExit(t, "--help"); code != 0 || !strings.Contains(out, "kms check") || !strings.Contains(out, "--health-address") || strings.Contains(out, "min-timeout") {
		t.Errorf("--help should list check and --health-address, and hide --min-timeout:\n%s", out)
	}
}

// A client watching health must not hold up a stop: the Watch stream ends
// with the daemon, which exits at once rather than at --shutdown-timeout.
func TestStopEndsHealthWatch(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := startDaemon(t, sock, "--command", "cat "+ring, "--shutdown-timeout", "2m")
	conn := testbin.Dial(t, sock)
	defer conn.Close()
	watch, err := healthpb.NewHealthClient(conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch: %v %v, want SERVING", r, err)
	}
	start := time.Now()
	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Stderr())
	}
	if took := time.Since(start); took > 30*time.Second || strings.Contains(d.Stderr(), "cutting them off") {
		t.Fatalf("stop took %v with a Watch open (--shutdown-timeout 2m):\n%s", took, d.Stderr())
	}
	for {
		r, err := watch.Recv()
		if err != nil {
			break
		}
		if r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("Watch after stop: %v", r.Status)
		}
	}
}
