package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"k8s.io/apiserver/pkg/features"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"

	"github.com/cmdkms/kms/src/testbin"
)

// kube-apiserver's own KMS clients, v1 and v2, pass --allow-uid (their
// process's uid) and are audited: every line names them, and the v2 ones
// carry kube-apiserver's request uid.
func TestKubeAPIServerWithCallerChecks(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.KMSv1, true)
	dir := testbin.ShortDir(t)
	sock, ring, auditLog := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring"), filepath.Join(dir, "audit.log")
	endpoint := "unix://" + sock
	key := testbin.NewKey()
	testbin.WriteKeyring(t, ring, key)
	uid := os.Geteuid()
	// A second uid in the list: the lists are sets, not a single id.
	testbin.StartKMS(t, sock, "--command", "cat "+ring, "--allow-uid", strconv.Itoa(uid+1)+","+strconv.Itoa(uid), "--audit-log", auditLog)

	api2 := load(t, encryptionConfig(t, dir, "v2.yaml", endpoint, false))
	api1 := load(t, encryptionConfig(t, dir, "v1.yaml", endpoint, true))
	api2.healthy(t)
	api1.healthy(t)
	const n = 50
	objs := append(api2.write(t, "v2", n), api1.write(t, "v1", n)...)
	fresh := load(t, encryptionConfig(t, dir, "v2-fresh.yaml", endpoint, false))
	fresh.healthy(t)
	fresh.readAll(t, "new API server", objs)

	data, err := os.ReadFile(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	// The API servers still call kms (health checks), and a reader may
	// see part of a write in flight: the lines that end are the log.
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	count := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var l struct {
			API        string `json:"api"`
			Op         string `json:"op"`
			KeyID      string `json:"key_id"`
			RequestUID string `json:"request_uid"`
			Code       string `json:"code"`
			PeerUID    int    `json:"peer_uid"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if l.PeerUID != uid || l.Code != "OK" || l.KeyID != keyID(key) {
			t.Errorf("audit line %q: want peer_uid %d, code OK, key_id %s", sc.Text(), uid, keyID(key))
		}
		if l.API == "v2" && l.RequestUID == "" {
			t.Errorf("v2 audit line without kube-apiserver's request uid: %q", sc.Text())
		}
		count[l.API+" "+l.Op]++
	}
	// kube-apiserver's KMS v2 encrypts one DEK seed per process and key
	// and decrypts it once per process; v1 encrypts a DEK per object and
	// decrypts it (on cache misses) per process.
	for _, k := range []string{"v2 encrypt", "v2 decrypt", "v1beta1 encrypt", "v1beta1 decrypt"} {
		if count[k] == 0 {
			t.Errorf("no %s in the audit log: %v", k, count)
		}
	}
	t.Logf("audited calls: %v", count)
}
