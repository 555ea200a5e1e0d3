package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

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

	// kube-apiserver's KMS v2 encrypts one DEK seed per process and key
	// and decrypts it once per process; v1 encrypts a DEK per object and
	// decrypts it (on cache misses) per process. kms writes each record a
	// few milliseconds after its call: wait for every kind.
	kinds := []string{"v2 encrypt", "v2 decrypt", "v1beta1 encrypt", "v1beta1 decrypt"}
	deadline := time.Now().Add(10 * time.Second)
	lines, count := auditedCalls(t, auditLog)
	for slices.ContainsFunc(kinds, func(k string) bool { return count[k] == 0 }) {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s the audit log holds %v, want each of %q", count, kinds)
		}
		time.Sleep(10 * time.Millisecond)
		lines, count = auditedCalls(t, auditLog)
	}
	for _, l := range lines {
		if l.PeerUID != uid || l.Code != "OK" || l.KeyID != keyID(key) {
			t.Errorf("audit line %+v: want peer_uid %d, code OK, key_id %s", l, uid, keyID(key))
		}
		if l.API == "v2" && l.RequestUID == "" {
			t.Errorf("v2 audit line without kube-apiserver's request uid: %+v", l)
		}
	}
	t.Logf("audited calls: %v", count)
}

// auditLine is what the test reads of an audit record.
type auditLine struct {
	API        string `json:"api"`
	Op         string `json:"op"`
	KeyID      string `json:"key_id"`
	RequestUID string `json:"request_uid"`
	Code       string `json:"code"`
	PeerUID    int    `json:"peer_uid"`
}

// auditedCalls parses the audit log's lines and counts them by API and
// operation. The API servers still call kms (health checks), and a reader
// may see part of a write in flight: the lines that end are the log.
func auditedCalls(t *testing.T, path string) ([]auditLine, map[string]int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	var lines []auditLine
	count := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
		count[l.API+" "+l.Op]++
	}
	return lines, count
}
