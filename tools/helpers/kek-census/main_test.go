package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	kmsv2 "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/helpers/helpertest"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kek-census-test")
	if err != nil {
		panic(err)
	}
	drillDir = dir
	code := testbin.Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

func runCensus(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	return testbin.Run(t, helpertest.KekCensus(t), args...)
}

// censusJSON runs kek-census --json and wants exit code.
func censusJSON(t testing.TB, code int, args ...string) *Result {
	t.Helper()
	out, errOut, got := runCensus(t, append(args, "--json")...)
	if got != code {
		t.Fatalf("kek-census %v: exit %d, want %d\n%s%s", args, got, code, out, errOut)
	}
	var r Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("kek-census %v: %v\n%s", args, err, out)
	}
	return &r
}

// A KEK, as kms holds it, to make the DEK ciphertexts values carry.
type testKEK struct {
	set *codec.Set
	id  string
}

func newKEK(t testing.TB) testKEK {
	t.Helper()
	r, err := kek.Parse(testbin.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	k, err := codec.NewKey(r.Keys[0])
	if err != nil {
		t.Fatal(err)
	}
	return testKEK{codec.NewSet([]*codec.Key{k}), k.KeyID}
}

func (k testKEK) wrap(t testing.TB) []byte {
	t.Helper()
	ct, err := k.set.Encrypt(codec.AESGCM, random(32))
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// kmsV2Value is a value as kube-apiserver stores it through a KMS v2
// provider named provider, whose plugin reported k's key_id.
func kmsV2Value(t testing.TB, provider string, k testKEK) string {
	t.Helper()
	b, err := proto.Marshal(&kmsv2.EncryptedObject{
		EncryptedData:          random(200),
		KeyID:                  k.id,
		EncryptedDEKSource:     k.wrap(t),
		EncryptedDEKSourceType: kmsv2.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED,
	})
	if err != nil {
		t.Fatal(err)
	}
	return "k8s:enc:kms:v2:" + provider + ":" + string(b)
}

// kmsV1Value is a KMS v1 value whose DEK the plugin encrypted to dek.
func kmsV1Value(provider string, dek []byte) string {
	return "k8s:enc:kms:v1:" + provider + ":" + string(binary.BigEndian.AppendUint16(nil, uint16(len(dek)))) + string(dek) + string(random(100))
}

func TestEnvelopes(t *testing.T) {
	e := startEtcd(t, false)
	old, cur := newKEK(t), newKEK(t)
	const pb = "k8s\x00\n\x0c\n\x02v1\x12\x06Secret"
	e.put(t, 100,
		"/registry/secrets/default/a", kmsV2Value(t, "kms-v2", cur),
		"/registry/secrets/default/b", kmsV2Value(t, "kms-v2", cur),
		"/registry/secrets/kube-system/c", kmsV2Value(t, "kms-v2", old),
		"/registry/secrets/default/d", kmsV1Value("kms-v1", old.wrap(t)),
		"/registry/secrets/default/e", kmsV1Value("other-plugin", random(64)),
		"/registry/secrets/default/f", "k8s:enc:aescbc:v1:key1:"+string(random(64)),
		"/registry/secrets/default/g", "k8s:enc:aesgcm:v1:key2:"+string(random(64)),
		"/registry/secrets/default/h", "k8s:enc:secretbox:v1:key3:"+string(random(64)),
		"/registry/secrets/default/i", pb,
		"/registry/configmaps/default/j", `{"kind":"ConfigMap","apiVersion":"v1"}`,
		"/registry/configmaps/default/k", kmsV2Value(t, "kms-v2", cur),
		"/registry/minions/node-1", pb, // cluster-scoped: nodes
		"/registry/stable.example.com/crontabs/default/l", kmsV2Value(t, "kms-v2", old),
		"/registry/apiregistration.k8s.io/apiservices/v1.", `{"kind":"APIService"}`,
		"/registry/secrets/default/m", "k8s:enc:kms:v2:kms-v2:not a protobuf \xff\xff\xff",
		"/registry/secrets/default/n", "k8s:enc:unheard:v1:x:"+string(random(8)),
		"/registry/health", "plain text", // a key right under the prefix
		// Outside the prefix: not counted.
		"/registryx/secrets/default/o", kmsV2Value(t, "kms-v2", old),
		"compact_rev_key", "1",
	)
	want := []Row{
		{"apiregistration.k8s.io/apiservices", identity, "", "", 1},
		{"configmaps", identity, "", "", 1},
		{"configmaps", kmsV2, "kms-v2", cur.id, 1},
		{"health", unknown, "", "", 1},
		{"minions", identity, "", "", 1},
		{"secrets", "aescbc", "key1", "", 1},
		{"secrets", "aesgcm", "key2", "", 1},
		{"secrets", identity, "", "", 1},
		{"secrets", kmsV1, "kms-v1", old.id, 1},
		{"secrets", kmsV1, "other-plugin", "", 1},
		{"secrets", kmsV2, "kms-v2", cur.id, 2},
		{"secrets", kmsV2, "kms-v2", old.id, 1},
		{"secrets", "secretbox", "key3", "", 1},
		{"secrets", unknown, "", "", 2},
		{"stable.example.com/crontabs", kmsV2, "kms-v2", old.id, 1},
	}
	slices.SortFunc(want, func(a, b Row) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	// etcd's range stream, and pages of 1 and 3: the same census.
	for _, page := range []string{"0", "1", "3"} {
		r := censusJSON(t, 0, "--endpoints", e.endpoint, "--page-size", page)
		got := slices.Clone(r.Rows)
		slices.SortFunc(got, func(a, b Row) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("--page-size %s: rows\n%v\nwant\n%v", page, got, want)
		}
		if r.Values != 17 || r.Revision == 0 || r.Prefix != "/registry/" || len(r.RequireNone) != 0 {
			t.Fatalf("--page-size %s: values %d, revision %d, prefix %q, require_none %v", page, r.Values, r.Revision, r.Prefix, r.RequireNone)
		}
	}

	// The table says the same.
	out, _, code := runCensus(t, "--endpoints", e.endpoint)
	if code != 0 || !strings.Contains(out, ": 17 values\n") || !regexpMatch(out, `(?m)^secrets +kms-v2 +kms-v2 +`+cur.id+` +2$`) ||
		!regexpMatch(out, `(?m)^stable.example.com/crontabs +kms-v2 +kms-v2 +`+old.id+` +1$`) || !regexpMatch(out, `(?m)^secrets +aescbc +key1 +- +1$`) {
		t.Fatalf("table (exit %d):\n%s", code, out)
	}

	// Only the resources asked for, in one census at one revision.
	r := censusJSON(t, 0, "--endpoints", e.endpoint, "--page-size", "2", "--resource", "stable.example.com/crontabs", "--resource", "configmaps")
	if r.Values != 3 || !reflect.DeepEqual(r.Rows, []Row{want[1], want[2], want[14]}) {
		t.Fatalf("--resource: %+v", r)
	}

	// Another --prefix (kube-apiserver's --etcd-prefix), with or without a
	// trailing slash.
	for _, p := range []string{"/registryx", "/registryx/"} {
		r := censusJSON(t, 0, "--endpoints", e.endpoint, "--prefix", p)
		if r.Values != 1 || len(r.Rows) != 1 || r.Rows[0] != (Row{"secrets", kmsV2, "kms-v2", old.id, 1}) {
			t.Fatalf("--prefix %s: %+v", p, r)
		}
	}
}

func regexpMatch(s, re string) bool { return regexp.MustCompile(re).MatchString(s) }

func TestRequireNone(t *testing.T) {
	e := startEtcd(t, false)
	old, cur := newKEK(t), newKEK(t)
	var kvs []string
	for i := range 25 {
		kvs = append(kvs, fmt.Sprintf("/registry/secrets/ns/old-%02d", i), kmsV2Value(t, "kms-v2", old))
	}
	for i := range 5 {
		kvs = append(kvs, fmt.Sprintf("/registry/configmaps/ns/new-%02d", i), kmsV2Value(t, "kms-v2", cur))
	}
	kvs = append(kvs,
		"/registry/secrets/ns/v1", kmsV1Value("kms-v1", old.wrap(t)),
		"/registry/secrets/ns/cbc", "k8s:enc:aescbc:v1:key1:"+string(random(48)),
		"/registry/secrets/ns/plain", `{"kind":"Secret"}`)
	e.put(t, 7, kvs...)
	ep := []string{"--endpoints", e.endpoint, "--page-size", "4"}

	// Nothing uses these: exit 0, and the table says so.
	out, errOut, code := runCensus(t, append(ep, "--require-none", "kek1-00000000000000000000000000000000", "--require-none", "kms")...)
	if code != 0 || errOut != "" || !strings.Contains(out, "ok: no value uses kek1-00000000000000000000000000000000\n") || !strings.Contains(out, "ok: no value uses kms\n") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}

	// The old key_id: 25 KMS v2 values and the KMS v1 one whose DEK it
	// wrapped; the first 10 are named, in key order.
	out, _, code = runCensus(t, append(ep, "--require-none", cur.id, "--require-none", old.id)...)
	wantKeys := "  /registry/secrets/ns/old-00\n"
	for i := 1; i < 10; i++ {
		wantKeys += fmt.Sprintf("  /registry/secrets/ns/old-%02d\n", i)
	}
	if code != 1 || !strings.Contains(out, "FAIL: 5 values still use "+cur.id+"; the first 5:\n  /registry/configmaps/ns/new-00\n") ||
		!strings.Contains(out, "FAIL: 26 values still use "+old.id+"; the first 10:\n"+wantKeys) {
		t.Fatalf("exit %d\n%s", code, out)
	}

	r := censusJSON(t, 1, append(ep, "--require-none", "kms-v1", "--require-none", "key1", "--require-none", "identity", "--require-none", "kms-v2")...)
	want := []Finding{
		{"kms-v1", 1, []string{"/registry/secrets/ns/v1"}},
		{"key1", 1, []string{"/registry/secrets/ns/cbc"}},
		{identity, 1, []string{"/registry/secrets/ns/plain"}},
		{"kms-v2", 30, []string{"/registry/configmaps/ns/new-00", "/registry/configmaps/ns/new-01", "/registry/configmaps/ns/new-02",
			"/registry/configmaps/ns/new-03", "/registry/configmaps/ns/new-04", "/registry/secrets/ns/old-00", "/registry/secrets/ns/old-01",
			"/registry/secrets/ns/old-02", "/registry/secrets/ns/old-03", "/registry/secrets/ns/old-04"}},
	}
	if !reflect.DeepEqual(r.RequireNone, want) {
		t.Fatalf("require_none %+v\nwant %+v", r.RequireNone, want)
	}
	r = censusJSON(t, 0, append(ep, "--require-none", "aesgcm")...) // an envelope kind is not a name
	if r.RequireNone[0].Values != 0 || len(r.RequireNone[0].FirstKeys) != 0 {
		t.Fatalf("require_none %+v", r.RequireNone)
	}
	// Plaintext values of resources the EncryptionConfiguration leaves
	// alone do not fail a --require-none identity limited to the others.
	e.put(t, 1, "/registry/events/ns/e1", `{"kind":"Event"}`)
	r = censusJSON(t, 0, append(ep, "--resource", "configmaps", "--require-none", "identity", "--require-none", old.id)...)
	if r.Values != 5 || r.RequireNone[0].Values != 0 || r.RequireNone[1].Values != 0 {
		t.Fatalf("--resource configmaps: %+v", r)
	}
}

// Values near etcd's 1.5 MiB request limit: a page of them exceeds what
// kek-census accepts in one response (32 MiB), and the page is split
// rather than the scan failing or memory growing with --page-size. etcd's
// range stream doubles its chunks while values are small: after 70 small
// values its fourth chunk would hold 80 large ones, 48 MiB, and the rest
// is read in pages.
func TestLargeValuesSplitPages(t *testing.T) {
	e := startEtcd(t, false)
	k := newKEK(t)
	small, big := kmsV2Value(t, "kms-v2", k), kmsV2Value(t, "kms-v2", k)+strings.Repeat("x", 600<<10)
	var kvs []string
	for i := range 70 {
		kvs = append(kvs, fmt.Sprintf("/registry/configmaps/ns/a-%02d", i), small)
	}
	for i := range 80 {
		kvs = append(kvs, fmt.Sprintf("/registry/configmaps/ns/b-%02d", i), big)
	}
	e.put(t, 1, kvs...)
	for _, page := range []string{"0", "1000"} {
		r := censusJSON(t, 0, "--endpoints", e.endpoint, "--page-size", page)
		if r.Values != 150 || len(r.Rows) != 1 || r.Rows[0].KeyID != k.id {
			t.Fatalf("--page-size %s: %+v", page, r)
		}
	}
}

func TestTLS(t *testing.T) {
	e := startEtcd(t, true)
	k := newKEK(t)
	e.put(t, 10, "/registry/secrets/ns/a", kmsV2Value(t, "kms-v2", k))
	p := e.pki
	r := censusJSON(t, 0, "--endpoints", e.endpoint, "--cacert", p.CA, "--cert", p.ClientCert, "--key", p.ClientKey)
	if r.Values != 1 || r.Rows[0].KeyID != k.id {
		t.Fatalf("%+v", r)
	}

	other := newPKI(t, t.TempDir()) // a CA etcd does not trust, and that did not sign etcd's certificate
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no client certificate", []string{"--cacert", p.CA}, "tls: certificate required"},
		{"client certificate from another CA", []string{"--cacert", p.CA, "--cert", other.ClientCert, "--key", other.ClientKey}, "tls: unknown certificate authority"},
		{"server certificate from another CA", []string{"--cacert", other.CA, "--cert", p.ClientCert, "--key", p.ClientKey}, "certificate signed by unknown authority"},
		{"unreadable --cacert", []string{"--cacert", p.CA + ".missing", "--cert", p.ClientCert, "--key", p.ClientKey}, "ca.crt.missing: no such file"},
		{"unreadable --cert", []string{"--cacert", p.CA, "--cert", p.ClientCert + ".missing", "--key", p.ClientKey}, "client.crt.missing: no such file"},
		{"--key of another --cert", []string{"--cacert", p.CA, "--cert", p.ClientCert, "--key", other.ClientKey}, "private key does not match public key"},
	} {
		out, errOut, code := runCensus(t, append([]string{"--endpoints", e.endpoint, "--dial-timeout", "3s"}, tc.args...)...)
		if code != 1 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want 1 and %q", tc.name, code, out, errOut, tc.want)
		}
	}
}

func TestUsageAndUnreachable(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--endpoints is required"},
		{[]string{"--endpoints", "127.0.0.1:2379"}, "want a URL like https://127.0.0.1:2379"},
		{[]string{"--endpoints", "https://127.0.0.1:2379", "--cert", "c"}, "--cert and --key go together"},
		{[]string{"--endpoints", "https://127.0.0.1:2379", "--prefix", "registry"}, "want an absolute key prefix"},
		{[]string{"--endpoints", "https://127.0.0.1:2379", "--page-size", "-1"}, "--page-size -1"},
		{[]string{"--endpoints", "https://127.0.0.1:2379", "--resource", "apps/deployments"}, `--resource "apps/deployments"`},
		{[]string{"--endpoints", "https://127.0.0.1:2379", "--resource", "example.com"}, `--resource "example.com"`},
		{[]string{"--endpoints", "https://127.0.0.1:2379", "--resource", "example.com/a/b"}, `--resource "example.com/a/b"`},
		{[]string{"--endpoints", "https://127.0.0.1:2379", "--require-none", ""}, "--require-none: empty value"},
		{[]string{"--endpoints", "https://127.0.0.1:2379", "extra"}, `unexpected argument "extra"`},
		{[]string{"--bogus"}, "unknown flag"},
	} {
		_, errOut, code := runCensus(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}

	// Nothing listens on a port just freed.
	ep := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	start := time.Now()
	out, errOut, code := runCensus(t, "--endpoints", ep, "--dial-timeout", "1s")
	if code != 1 || out != "" || !strings.Contains(errOut, "kek-census: etcd "+ep+": no answer within --dial-timeout 1s ("+ep+": dial tcp 127.0.0.1:") ||
		!strings.Contains(errOut, "connection refused") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("took %v with --dial-timeout 1s", d)
	}

	out, _, code = runCensus(t, "--help")
	for _, want := range []string{"--endpoints", "--cacert", "--cert", "--key", "--prefix", "--require-none", "--json", "--page-size", "--dial-timeout", "docs/census.md"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("--help (exit %d) lacks %q", code, want)
		}
	}
}

// rangeOnly is etcd as it was before 3.7, for the census: a gRPC KV
// service without RangeStream, whose Range requests the real etcd answers.
type rangeOnly struct {
	pb.UnimplementedKVServer
	kv      pb.KVClient
	streams atomic.Int32
}

func (p *rangeOnly) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return p.kv.Range(ctx, r)
}

func (p *rangeOnly) RangeStream(*pb.RangeRequest, grpc.ServerStreamingServer[pb.RangeStreamResponse]) error {
	p.streams.Add(1)
	return status.Error(codes.Unimplemented, "unknown method RangeStream for service etcdserverpb.KV")
}

// Against etcd before 3.7, which has no range stream, the census reads in
// pages.
func TestWithoutRangeStream(t *testing.T) {
	e := startEtcd(t, false)
	k := newKEK(t)
	var kvs []string
	for i := range 2500 {
		kvs = append(kvs, fmt.Sprintf("/registry/secrets/ns/s-%04d", i), kmsV2Value(t, "kms-v2", k))
	}
	e.put(t, 100, kvs...)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old := &rangeOnly{kv: pb.NewKVClient(e.client.ActiveConnection())}
	srv := grpc.NewServer()
	pb.RegisterKVServer(srv, old)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	r := censusJSON(t, 0, "--endpoints", "http://"+l.Addr().String())
	if r.Values != 2500 || len(r.Rows) != 1 || r.Rows[0].KeyID != k.id || old.streams.Load() != 1 {
		t.Fatalf("%d range streams asked for; census %+v", old.streams.Load(), r)
	}
}
