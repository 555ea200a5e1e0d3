package main

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	kmsv2 "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/helpers/helpertest"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

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
	// Pages of 1, 3 and the default: the same census.
	for _, page := range []string{"1", "3", "1000"} {
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
