package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"

	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
)

// Values written by kube-apiserver's own encryption-at-rest code
// (k8s.io/apiserver, as in src/e2e) through each provider, the KMS ones
// backed by the real kms daemon, are counted under that provider and the
// daemon's key_id.
func TestAPIServerEnvelopes(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.KMSv1, true)
	e := startEtcd(t, false)
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	secret := testbin.NewKey()
	testbin.WriteKeyring(t, ring, secret)
	testbin.StartKMS(t, sock, "--command", "cat "+ring)
	parsed, err := kek.Parse(secret)
	if err != nil {
		t.Fatal(err)
	}
	id := parsed.Keys[0].ID.String()

	key := func() string { return base64.StdEncoding.EncodeToString(testbin.NewKey()) }
	providers := []struct {
		yaml string
		want Row
	}{
		{"kms: {apiVersion: v2, name: kms-v2, endpoint: unix://" + sock + ", timeout: 10s}", Row{"secrets", kmsV2, "kms-v2", id, 1}},
		{"kms: {apiVersion: v1, name: kms-v1, endpoint: unix://" + sock + ", timeout: 10s, cachesize: 10}", Row{"secrets", kmsV1, "kms-v1", id, 1}},
		{"aescbc: {keys: [{name: key1, secret: " + key() + "}]}", Row{"secrets", "aescbc", "key1", "", 1}},
		{"aesgcm: {keys: [{name: key2, secret: " + key() + "}]}", Row{"secrets", "aesgcm", "key2", "", 1}},
		{"secretbox: {keys: [{name: key3, secret: " + key() + "}]}", Row{"secrets", "secretbox", "key3", "", 1}},
		{"identity: {}", Row{"secrets", identity, "", "", 1}},
	}
	var want []Row
	for i, p := range providers {
		path := filepath.Join(dir, fmt.Sprintf("config-%d.yaml", i))
		config := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - " + p.yaml + "\n"
		if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		cfg, err := encryptionconfig.LoadEncryptionConfig(ctx, path, false, "census")
		if err != nil {
			t.Fatalf("%s: %v", p.yaml, err)
		}
		k := fmt.Sprintf("/registry/secrets/census/%d", i)
		stored, err := cfg.Transformers[schema.GroupResource{Resource: "secrets"}].TransformToStorage(ctx, []byte(`{"kind":"Secret"}`), value.DefaultContext(k))
		if err != nil {
			t.Fatalf("%s: TransformToStorage: %v", p.yaml, err)
		}
		e.put(t, 1, k, string(stored))
		want = append(want, p.want)
	}
	r := censusJSON(t, 0, "--endpoints", e.endpoint)
	got := map[Row]bool{}
	for _, row := range r.Rows {
		got[row] = true
	}
	wantSet := map[Row]bool{}
	for _, row := range want {
		wantSet[row] = true
	}
	if !reflect.DeepEqual(got, wantSet) {
		t.Fatalf("rows %+v\nwant %+v", r.Rows, want)
	}
}
