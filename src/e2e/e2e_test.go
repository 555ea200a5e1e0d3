// Package e2e drives the real kms daemon with kube-apiserver's own
// encryption-at-rest code (k8s.io/apiserver). It must not import
// github.com/cmdkms/kms/proto/...: k8s.io/kms registers the same proto
// names and the two registrations would conflict.
package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope"
	envelopekmsv2 "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"

	"github.com/cmdkms/kms/src/codec/codectest"
	"github.com/cmdkms/kms/src/testbin"
)

const secretsPerAPI = 1000

var secrets = schema.GroupResource{Resource: "secrets"}

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// keyID is the key_id rule of docs/kek.md, computed here independently.
func keyID(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("cmdkms key id v1"))
	return "kek1-" + hex.EncodeToString(m.Sum(nil)[:16])
}

// encryptionConfig writes an EncryptionConfiguration for secrets; the first
// provider writes, all of them read.
func encryptionConfig(t *testing.T, dir, name, endpoint string, v1First bool) string {
	t.Helper()
	v2p := fmt.Sprintf("  - kms:\n      apiVersion: v2\n      name: kms2\n      endpoint: %s\n      timeout: 10s\n", endpoint)
	v1p := fmt.Sprintf("  - kms:\n      apiVersion: v1\n      name: kms1\n      endpoint: %s\n      timeout: 10s\n      cachesize: 100\n", endpoint)
	providers := v2p + v1p
	if v1First {
		providers = v1p + v2p
	}
	text := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n" +
		"- resources: [secrets]\n  providers:\n" + providers
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// apiserver is what one kube-apiserver process would hold: the transformer
// for secrets, built from a config file the way the API server builds it.
type apiserver struct {
	tr     value.Transformer
	checks *encryptionconfig.EncryptionConfiguration
}

func load(t *testing.T, path string) *apiserver {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg, err := encryptionconfig.LoadEncryptionConfig(ctx, path, false, "e2e")
	if err != nil {
		t.Fatalf("LoadEncryptionConfig: %v", err)
	}
	return &apiserver{tr: cfg.Transformers[secrets], checks: cfg}
}

func (a *apiserver) healthy(t *testing.T) {
	t.Helper()
	for _, c := range a.checks.HealthChecks {
		if err := c.Check(httptest.NewRequest("GET", "/healthz", nil)); err != nil {
			t.Fatalf("health check %s: %v", c.Name(), err)
		}
	}
}

type object struct {
	key   string
	plain []byte
	// stored is what etcd would hold.
	stored []byte
}

func (a *apiserver) write(t *testing.T, prefix string, n int) []object {
	t.Helper()
	ctx := context.Background()
	objs := make([]object, n)
	for i := range objs {
		o := &objs[i]
		o.key = fmt.Sprintf("/registry/secrets/e2e/%s-%d", prefix, i)
		o.plain = fmt.Appendf(nil, `{"kind":"Secret","metadata":{"name":"%s-%d"},"data":{"k":"%x"}}`, prefix, i, testbin.NewKey())
		var err error
		o.stored, err = a.tr.TransformToStorage(ctx, o.plain, value.DefaultContext(o.key))
		if err != nil {
			t.Fatalf("TransformToStorage %s: %v", o.key, err)
		}
	}
	return objs
}

func (a *apiserver) readAll(t *testing.T, what string, objs []object) {
	t.Helper()
	ctx := context.Background()
	for _, o := range objs {
		got, _, err := a.tr.TransformFromStorage(ctx, o.stored, value.DefaultContext(o.key))
		if err != nil || !bytes.Equal(got, o.plain) {
			t.Fatalf("%s: TransformFromStorage %s: %v", what, o.key, err)
		}
	}
}

// storedKeyID says which KEK protects an object, from the bytes etcd holds:
// KMS v2 keeps the key_id in its EncryptedObject; KMS v1 keeps our
// ciphertext of the DEK, whose header names the key (docs/kek.md).
func storedKeyID(t *testing.T, stored []byte) string {
	t.Helper()
	if rest, ok := bytes.CutPrefix(stored, []byte("k8s:enc:kms:v2:kms2:")); ok {
		var eo kmstypes.EncryptedObject
		if err := proto.Unmarshal(rest, &eo); err != nil {
			t.Fatal(err)
		}
		return eo.KeyID
	}
	if rest, ok := bytes.CutPrefix(stored, []byte("k8s:enc:kms:v1:kms1:")); ok {
		dek := rest[2 : 2+binary.BigEndian.Uint16(rest)]
		if !bytes.HasPrefix(dek, []byte(":ck:v2:aesgcm:")) {
			t.Fatalf("v1 DEK ciphertext has header %q", dek[:14])
		}
		return "kek1-" + hex.EncodeToString(dek[14:30])
	}
	t.Fatalf("object is not KMS-encrypted: %.30q", stored)
	return ""
}

func countKeyIDs(t *testing.T, objs []object) map[string]int {
	ids := map[string]int{}
	for _, o := range objs {
		ids[storedKeyID(t, o.stored)]++
	}
	return ids
}

func TestKubeAPIServerEncryption(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.KMSv1, true)
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	endpoint := "unix://" + sock
	a, b := testbin.NewKey(), testbin.NewKey()
	testbin.WriteKeyring(t, ring, a)
	args := []string{"--command", "cat " + ring}
	d := testbin.StartKMS(t, sock, args...)

	v2Path := encryptionConfig(t, dir, "v2.yaml", endpoint, false)
	v1Path := encryptionConfig(t, dir, "v1.yaml", endpoint, true)
	api2, api1 := load(t, v2Path), load(t, v1Path)
	api2.healthy(t)
	api1.healthy(t)

	began := time.Now()
	objs := append(api2.write(t, "v2", secretsPerAPI), api1.write(t, "v1", secretsPerAPI)...)
	t.Logf("wrote %d secrets (%d via KMS v2, %d via KMS v1) in %v", len(objs), secretsPerAPI, secretsPerAPI, time.Since(began))
	if ids := countKeyIDs(t, objs); ids[keyID(a)] != len(objs) {
		t.Fatalf("key ids before rotation: %v, want all %s", ids, keyID(a))
	}
	t.Logf("key_id before rotation: %s (all %d objects)", keyID(a), len(objs))

	// Restart the daemon. The running "API servers" reconnect; new ones
	// start with cold caches, so every DEK goes through the new process.
	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("kms exit %d:\n%s", code, d.Stderr())
	}
	d = testbin.StartKMS(t, sock, args...)
	api2.readAll(t, "running v2 API server after restart", objs)
	api1.readAll(t, "running v1 API server after restart", objs)
	fresh := load(t, v2Path)
	fresh.healthy(t)
	fresh.readAll(t, "new API server after restart", objs)
	t.Logf("read back %d secrets after the daemon restarted", len(objs))

	// Rotate: b becomes primary, a stays listed; a third, 2018-era key joins
	// as decrypt-only (see codectest.LegacyVectors).
	testbin.WriteKeyring(t, ring, b, a, codectest.LegacyVectors[1].Key())
	d.Signal(syscall.SIGHUP)
	status := v2Status(t, endpoint)
	deadline := time.Now().Add(30 * time.Second)
	for status.KeyID != keyID(b) {
		if time.Now().After(deadline) {
			t.Fatalf("Status key_id still %s after SIGHUP:\n%s", status.KeyID, d.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
		status = v2Status(t, endpoint)
	}
	// kube-apiserver notices a new key_id on its next Status probe (every
	// minute); a new API server process (or config reload) notices at once.
	rot2, rot1 := load(t, v2Path), load(t, v1Path)
	rot2.healthy(t)
	rot1.healthy(t)
	newObjs := append(rot2.write(t, "v2-rotated", 100), rot1.write(t, "v1-rotated", 100)...)
	if ids := countKeyIDs(t, newObjs); ids[keyID(b)] != len(newObjs) {
		t.Fatalf("key ids after rotation: %v, want all %s", ids, keyID(b))
	}
	t.Logf("key_id after rotation: %s (all %d new objects); old objects keep %s", keyID(b), len(newObjs), keyID(a))
	rot2.readAll(t, "after rotation, old objects", objs)
	rot2.readAll(t, "after rotation, new objects", newObjs)
	api1.readAll(t, "running v1 API server after rotation", newObjs)

	// And after one more restart, with a still listed.
	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("kms exit %d", code)
	}
	d = testbin.StartKMS(t, sock, args...)
	last := load(t, v2Path)
	last.healthy(t)
	last.readAll(t, "after rotation and restart", append(objs, newObjs...))

	// 2018 ciphertexts of DEKs decrypt through kube-apiserver's v1 client.
	svc, err := envelope.NewGRPCService(context.Background(), endpoint, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range codectest.LegacyVectors[1:] {
		p, err := svc.Decrypt(v.Ciphertext())
		if err != nil || string(p) != v.Plain {
			t.Fatalf("legacy vector %d: %q, %v", i+1, p, err)
		}
	}
	if strings.Contains(d.Stderr(), base64.StdEncoding.EncodeToString(a)) {
		t.Fatal("key material in the daemon log")
	}
}

func v2Status(t *testing.T, endpoint string) struct{ KeyID, Healthz string } {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svc, err := envelopekmsv2.NewGRPCService(ctx, endpoint, "status-probe", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st, err := svc.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return struct{ KeyID, Healthz string }{st.KeyID, st.Healthz}
}

// A daemon started exactly as in 2018 (raw 32-byte KEK on stdout) reads
// the 2018 daemon's ciphertexts, through kube-apiserver's KMS v1 client.
func TestLegacyVectorsWithRawKEK(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, raw := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "kek.bin")
	v := codectest.LegacyVectors[0]
	os.WriteFile(raw, v.Key(), 0o600)
	testbin.StartKMS(t, sock, "--command", "cat "+raw)
	svc, err := envelope.NewGRPCService(context.Background(), "unix://"+sock, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p, err := svc.Decrypt(v.Ciphertext())
	if err != nil || string(p) != v.Plain {
		t.Fatalf("legacy vector: %q, %v", p, err)
	}
	// Random DEKs from the independent encoder too.
	for range 50 {
		dek, iv := testbin.NewKey(), testbin.NewKey()[:16]
		p, err := svc.Decrypt(codectest.LegacyEncrypt(v.Key(), iv, dek))
		if err != nil || !bytes.Equal(p, dek) {
			t.Fatalf("legacy DEK: %v", err)
		}
	}
	if got := v2Status(t, "unix://"+sock).KeyID; got != keyID(v.Key()) {
		t.Fatalf("raw KEK key_id %s, want %s", got, keyID(v.Key()))
	}
}

var (
	healthAddrRE  = regexp.MustCompile(`serving /healthz, /readyz and /metrics" address=(\S+)`)
	connectionsRE = regexp.MustCompile(`(?m)^kms_connections (\d+)$`)
)

// connections is the daemon's kms_connections gauge.
func connections(t *testing.T, d *testbin.Proc) int {
	t.Helper()
	m := healthAddrRE.FindStringSubmatch(d.Stderr())
	if m == nil {
		t.Fatalf("no health address in the log:\n%s", d.Stderr())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	c := connectionsRE.FindSubmatch(body)
	if c == nil {
		t.Fatalf("no kms_connections in /metrics")
	}
	n, _ := strconv.Atoi(string(c[1]))
	return n
}

// kube-apiserver keeps its connection to the plugin for as long as it
// runs. When the daemon closes it for idleness (here after 1 s instead of
// 5 min), kube-apiserver's clients dial again on their next call, and no
// call fails.
func TestIdleConnectionsAreRedialled(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.KMSv1, true)
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	endpoint := "unix://" + sock
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := testbin.StartKMS(t, sock, "--command", "cat "+ring, "--idle-timeout", "1s", "--health-address", "127.0.0.1:0")
	api2 := load(t, encryptionConfig(t, dir, "v2.yaml", endpoint, false))
	api1 := load(t, encryptionConfig(t, dir, "v1.yaml", endpoint, true))
	var objs []object
	for round := range 3 {
		api2.healthy(t)
		api1.healthy(t)
		objs = append(objs, api2.write(t, fmt.Sprintf("v2-%d", round), 20)...)
		objs = append(objs, api1.write(t, fmt.Sprintf("v1-%d", round), 20)...)
		if n := connections(t, d); n == 0 {
			t.Fatalf("round %d: no connection open right after calls", round)
		}
		testbin.WaitFor(t, "the idle connections to be closed", 15*time.Second, func() bool { return connections(t, d) == 0 })
		// New API server processes (cold DEK caches) decrypt everything.
		load(t, encryptionConfig(t, dir, "v2.yaml", endpoint, false)).readAll(t, "after an idle close", objs)
	}
	api1.readAll(t, "the first API server, after three idle closes", objs)
	t.Logf("3 idle closes: %d objects written and read back, no call failed", len(objs))
}

// kube-apiserver may have many more calls in flight than the daemon serves
// on one connection (transport.MaxStreams): its gRPC client waits for a
// free stream, and no call fails.
func TestMoreCallsThanStreams(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.KMSv1, true)
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	testbin.StartKMS(t, sock, "--command", "cat "+ring)
	// KMS v1 encrypts a new DEK with the plugin for every write.
	api := load(t, encryptionConfig(t, dir, "v1.yaml", "unix://"+sock, true))
	const writers = 200
	var wg sync.WaitGroup
	objs := make([]object, writers)
	errs := make([]error, writers)
	for i := range objs {
		o := &objs[i]
		o.key, o.plain = fmt.Sprintf("/registry/secrets/e2e/w%d", i), testbin.NewKey()
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.stored, errs[i] = api.tr.TransformToStorage(context.Background(), o.plain, value.DefaultContext(o.key))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("writes by %d writers at once: %v", writers, err)
	}
	load(t, encryptionConfig(t, dir, "v1.yaml", "unix://"+sock, true)).readAll(t, "written by 200 writers at once", objs)
}
