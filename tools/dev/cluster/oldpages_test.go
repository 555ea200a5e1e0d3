package cluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestOldPages does on the drill's cluster what docs/airgap.md and
// docs/rotation.md said before issue 18 (git show 4991a1e:docs/...), and
// shows the first three defects the issue found in them: turning
// encryption on one API server at a time with the shipped configuration
// (kms first) breaks reads through the others; a rewrite right after the
// promotion, with no check that every API server writes under the new key,
// leaves Secrets under the old key; rewriting only Secrets leaves every
// other encrypted resource under it; retiring the old key then loses them.
// It proves the old pages wrong, so it runs on demand only:
// KMS_DRILL_OLD_PAGES=1 go test -run TestOldPages.
func TestOldPages(t *testing.T) {
	if os.Getenv("KMS_DRILL_OLD_PAGES") == "" {
		t.Skip("KMS_DRILL_OLD_PAGES=1 runs the pages' procedures as they were before issue 18")
	}
	c := New(t)
	c.Start(t)
	clients := c.Clients(t)
	ctx := context.Background()
	c.Sh(t, "kubectl create namespace drill")
	var items []string
	for i := range 200 {
		items = append(items, fmt.Sprintf(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"old-%03d"},"stringData":{"v":"%d"}}`, i, i))
	}
	f := filepath.Join(c.Dir, "secrets.json")
	writeFile(t, f, []byte(`{"apiVersion":"v1","kind":"List","items":[`+strings.Join(items, ",")+`]}`))
	c.Sh(t, "kubectl -n drill create -f "+f+" >/dev/null")
	c.CreateObjects(t, map[GroupResource]int{Resources[1]: 50, Resources[2]: 50})
	n1 := c.Nodes[0]
	k1 := primary(c.Status(t, n1))
	restart := func(n *node) {
		c.StopControllerManager(t, n)
		c.StopAPIServer(t, n)
		c.StartAPIServer(t, n)
		c.StartControllerManagers(t, n)
	}

	// Defect 1. The old Deploy: kms first (the shipped configuration) on
	// each API server in turn. Once the first has it, the others cannot
	// read what it writes.
	c.providers = []Provider{{"v2", "kms"}}
	c.writeEncryptionConfig(t, n1)
	restart(n1)
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "written-by-n1"}, StringData: map[string]string{"v": "x"}}
	if _, err := clients[0].CoreV1().Secrets("drill").Create(ctx, s, metav1.CreateOptions{}); err != nil {
		t.Fatalf("n1: %v", err)
	}
	if _, err := clients[1].CoreV1().Secrets("drill").Get(ctx, s.Name, metav1.GetOptions{}); err != nil {
		t.Logf("DEFECT 1 SHOWN (outage): n2 cannot read what n1 writes after n1 alone turned encryption on: %s", describe(err))
	} else {
		t.Errorf("defect 1 not shown: n2 read what n1 wrote")
	}
	for _, n := range c.Nodes[1:] {
		c.writeEncryptionConfig(t, n)
		restart(n)
	}
	migrate(t, c) // everything under k1 now, as the old pages never said
	c.Sh(t, "kek-census --endpoints \"$ETCDCTL_ENDPOINTS\" --cacert \"$ETCDCTL_CACERT\" --cert \"$ETCDCTL_CERT\" --key \"$ETCDCTL_KEY\" --require-none identity --resource secrets --resource configmaps --resource drill.kms.test/credentials")

	// Defects 2 and 3. The old rotation: the new key on every node, then
	// primary, then at once the rewrite of the Secrets.
	out := c.NodeSh(t, n1, "kek-gen --add-secondary /etc/kubernetes/kms/kek")
	k2 := regexp.MustCompile(`added key_id (kek1-[0-9a-f]{32})`).FindStringSubmatch(out)[1]
	c.distributeOld(t)
	c.NodeSh(t, n1, "kek-gen --promote "+k2+" /etc/kubernetes/kms/kek")
	c.distributeOld(t)
	c.Sh(t, "kubectl get secrets -A -o json | kubectl replace -f - >/dev/null")
	under := map[string]int{}
	census, _, _ := c.ShCode(t, "kek-census --endpoints \"$ETCDCTL_ENDPOINTS\" --cacert \"$ETCDCTL_CACERT\" --cert \"$ETCDCTL_CERT\" --key \"$ETCDCTL_KEY\" --resource secrets --resource configmaps --resource drill.kms.test/credentials")
	for _, l := range strings.Split(census, "\n") {
		if f := strings.Fields(l); len(f) == 5 && f[3] == k1 {
			var n int
			fmt.Sscan(f[4], &n)
			under[f[0]] = n
		}
	}
	t.Logf("values still under the old key %s after the old rewrite: %v\n%s", k1, under, census)
	if under["secrets"] > 0 {
		t.Logf("DEFECT 2 SHOWN (data loss ahead): %d Secrets rewritten through API servers still on the old key_id stay under it", under["secrets"])
	} else {
		t.Errorf("defect 2 not shown: every Secret moved without the check")
	}
	if under["configmaps"] > 0 && under["drill.kms.test/credentials"] > 0 {
		t.Logf("DEFECT 3 SHOWN (data loss ahead): %d ConfigMaps and %d Credentials were not rewritten", under["configmaps"], under["drill.kms.test/credentials"])
	} else {
		t.Errorf("defect 3 not shown: %v", under)
	}

	// The old step 4: retire the old key and restart the daemons "when
	// convenient". An API server that starts then cannot read what is left
	// under the old key, and never becomes ready.
	c.NodeSh(t, n1, "kek-gen --retire "+k1+" /etc/kubernetes/kms/kek")
	c.distributeOld(t)
	for _, n := range c.Nodes {
		c.StopKMS(t, n)
		c.StartKMS(t, n)
	}
	c.StopControllerManager(t, n1)
	c.StopAPIServer(t, n1)
	c.startAPIServer(t, n1)
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := c.Get(n1.apiURL() + "/readyz"); code == http.StatusOK {
			t.Fatalf("n1's API server is ready after the old key was retired")
		}
		time.Sleep(time.Second)
	}
	lost := "key_id \"" + k1 + "\" is not in the keyring"
	if log := tail(n1.api.log, 200); strings.Contains(log, lost) {
		t.Logf("DATA LOST: n1's API server, restarted, is not ready after 90 s, and logs: %s", lost)
	} else {
		t.Errorf("n1's API server is not ready, but does not log %q", lost)
	}
}

// distributeOld copies n1's keyring to the others and refreshes every
// daemon, with the old pages' kms refresh.
func (c *Cluster) distributeOld(t testing.TB) {
	t.Helper()
	for _, n := range c.Nodes {
		if n != c.Nodes[0] {
			c.copyKeyring(t, n)
		}
		c.NodeSh(t, n, "kms refresh")
	}
}
