package cluster

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBinDir()
	os.Exit(code)
}

const secrets = 1000

// created is how many objects of each encrypted resource the drill creates
// before the rotation (the load adds Secrets).
var created = map[GroupResource]int{Resources[0]: secrets, Resources[1]: 300, Resources[2]: 300}

// The HA drill of issues 12 and 18, KMS v2: three API servers on one etcd
// cluster, each with its own kms and kube-controller-manager; rotation with
// the two-phase procedure, ended by a storage version migration of every
// encrypted resource, then faults, all under load through every API
// server.
func TestHADrill(t *testing.T) { drill(t, "v2") }

// The same with KMS v1 providers (--feature-gates=KMSv1=true). A v1
// envelope names no key, so a new primary alone makes nothing stale: the
// rewrite needs a provider of a new name, introduced second on every API
// server before it goes first anywhere.
func TestHADrillV1(t *testing.T) { drill(t, "v1") }

// drill is the whole procedure for KMS API api.
func drill(tt *testing.T, api string) {
	if testing.Short() {
		tt.Skip("the HA drill runs three etcd members and three kube-apiservers")
	}
	t := &recorder{TB: tt}
	// Registered before New's, so it runs after New's log dump: a CI
	// shows the end of the output, which must say why the drill failed.
	t.Cleanup(t.repeat)
	BinDir(t) // before the clock starts: the build is not the drill
	began := time.Now()
	old, neu := Provider{"v2", "kms"}, Provider{"v2", "kms"}
	health := "/readyz/kms-providers"
	if api == "v1" {
		old, neu = Provider{"v1", "kms-v1"}, Provider{"v1", "kms-v1-2"}
		health = "/readyz/kms-provider-0"
	}
	// The v2 drill starts unencrypted, as a cluster is before kms, and
	// turns encryption on; the v1 drill starts encrypted (its time goes to
	// the v1 rotation).
	start := []Provider{old}
	if api == "v2" {
		start = nil
	}
	c := New(t, start...)
	c.Start(t)
	clients := c.Clients(t)
	for _, ns := range []string{"drill", "load"} {
		if _, err := clients[0].CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("cluster up in %v: %s", time.Since(began).Round(time.Second), c.Dir)
	l := StartLoad(clients, "load", "create")
	defer func() { report(t, api, l, began) }()
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]

	// Objects under the first key (v2: in plaintext), through all three
	// API servers.
	k1 := primary(c.Status(t, n1))
	c.WantKeys(t, Keys{k1: "primary"})
	// docs/verify.md's example reads this one.
	c.Sh(t, "kubectl -n default create secret generic my-secret --from-literal=v=drill")
	createSecrets(t, l, secrets)
	objects := c.CreateObjects(t, created)
	if api == "v2" {
		encryptionOn(t, c, l, old, k1, health)
	}
	c.WantStored(t, old, k1, created)
	if api == "v1" {
		from2018(t, c, l, old, k1)
	}

	// Rotation, phase 1 (docs/rotation.md): the new key on every node,
	// decrypt-only, so that whichever API server writes with it first,
	// all can read it.
	l.Phase("rotate")
	for _, n := range c.Nodes {
		c.MustRun(t, n, rotStatus)
	}
	if old := c.note(t, "OLD"); old != k1 {
		t.Fatalf("rotation.md's OLD is %q, want the primary %s", old, k1)
	}
	c.MustRun(t, n1, rotAdd)
	k2 := c.note(t, "NEW")
	if !regexp.MustCompile(`^kek1-[0-9a-f]{32}$`).MatchString(k2) {
		t.Fatalf("rotation.md's NEW is %q, want a key_id", k2)
	}
	c.distribute(t)
	c.WantKeys(t, Keys{k1: "primary", k2: "listed"})
	// Phase 2: the new key primary everywhere.
	c.MustRun(t, n1, rotPromote)
	c.distribute(t)
	c.WantKeys(t, Keys{k2: "primary", k1: "listed"})
	if api == "v1" {
		// The new provider second everywhere, then first everywhere: a
		// node never writes what another cannot read.
		l.Phase("v1: provider " + neu.Name + " second")
		c.SetProviders(t, old, neu)
		rollingRestart(t, c, l, false, nil)
		l.Phase("v1: provider " + neu.Name + " first")
		c.SetProviders(t, neu, old)
		rollingRestart(t, c, l, false, nil)
	}
	// The gate: every API server writes under the new key. Until then a
	// migration through one that does not would leave objects under the
	// old key, which the census would then find.
	l.Phase("check writes")
	gone := k1 // what must no longer be in etcd before it is retired
	if api == "v1" {
		gone = old.Name
	}
	// KMS v1 values name no key_id: the check of the v1 section reads the
	// canary in etcd instead.
	checkWrites(t, c, neu, k2, health, api == "v2")
	census(t, c, gone, false)

	// Migrate every encrypted resource; etcd then holds nothing under the
	// old key.
	l.Phase("migrate")
	migrate(t, c)
	if api == "v2" {
		// The way before Kubernetes 1.35, once: it must change nothing
		// the drill checks.
		c.MustRun(t, n1, rotReplace)
	}
	c.WantStored(t, neu, k2, created)
	if api == "v2" {
		// A v1 census names the old provider instead (the drill's, below).
		c.MustRun(t, n1, rotCensus)
	}
	census(t, c, gone, true)

	// Retire the old key; restart everything, node by node; all reads back.
	l.Phase("retire, restart all")
	// kill -HUP this time, the other way to refresh a node.
	c.MustRun(t, n1, rotRetire)
	for _, n := range c.Nodes {
		if n != n1 {
			c.copyKeyring(t, n)
		}
		c.HUP(t, n)
		c.WaitKeys(t, n, Keys{k2: "primary", k1: "unlisted"})
	}
	if api == "v1" {
		c.SetProviders(t, neu)
	}
	rollingRestart(t, c, l, true, nil)
	c.WantKeys(t, Keys{k2: "primary"})
	readBack(t, clients, l.Want())
	c.ReadObjects(t, objects)

	// Faults, none announced to the load.
	l.Phase("fault: kill -9 kms n2, its keyring lost")
	c.Sh(t, fmt.Sprintf("kill -9 %d", n2.kms.pid()))
	waitHealth(t, c, n2, health, false)
	time.Sleep(5 * time.Second) // calls through n2 meanwhile
	// docs/rotation.md, "Recovering a node that lost its keyring": kms
	// does not start without it; a copy from a healthy node, and it does.
	c.Sh(t, "rm "+n2.keyring())
	c.StartKMSFailing(t, n2, "the KEK command failed at start")
	c.copyKeyring(t, n2)
	c.StartKMS(t, n2)
	c.WantKeys(t, Keys{k2: "primary"})
	waitHealth(t, c, n2, health, true)

	l.Phase("fault: stop etcd n3")
	c.StopEtcd(t, n3)
	waitHealth(t, c, n3, "/readyz/etcd", false)
	time.Sleep(5 * time.Second)
	c.StartEtcd(t, n3)
	waitHealth(t, c, n3, "/readyz", true)

	l.Phase("fault: restart kube-apiserver n1")
	c.StopAPIServer(t, n1)
	c.StartAPIServer(t, n1)
	kubeletRestart(t, c, n1)

	l.Phase("after the faults")
	time.Sleep(5 * time.Second)
	for _, n := range c.Nodes {
		waitHealth(t, c, n, health, true)
	}
	readBack(t, clients, l.Want())
	c.WantStored(t, neu, k2, created)
	c.WantKeys(t, Keys{k2: "primary"})
	if api == "v1" {
		migrateToV2(t, c, l, neu, k2)
	}
	c.ReadObjects(t, objects)
	kubeletRestart(t, c, n1) // it may have given up just after the check above
	for _, n := range c.Nodes {
		if !n.kcm.running() {
			t.Errorf("%s exited (%v):\n%s", n.kcm.name, n.kcm.cmd.ProcessState, tail(n.kcm.log, 20))
		}
	}
	c.ran.check(t, api)
	// The census of the whole store, every resource, for the record.
	t.Logf("census of the drill's etcd:\n%s", c.Sh(t, `kek-census --endpoints "$ETCDCTL_ENDPOINTS" --cacert "$ETCDCTL_CACERT" --cert "$ETCDCTL_CERT" --key "$ETCDCTL_KEY"`))
	checkFailures(t, l.Stop())
	if total := time.Since(began); total > 10*time.Minute {
		t.Errorf("the drill took %v, more than 10 minutes", total.Round(time.Second))
	}
}

// kubeletRestart starts n's controller manager again, as the kubelet would,
// if it exited because it lost its lease: a leader whose API server is down
// past its renew deadline does (seen under load while n's API server
// restarted). Any other exit stays a failure for the check at the end.
func kubeletRestart(t testing.TB, c *Cluster, n *node) {
	t.Helper()
	if n.kcm.running() || !strings.Contains(tail(n.kcm.log, 5), "leaderelection lost") {
		return
	}
	t.Logf("%s lost its lease while its API server was down and exited; started again", n.kcm.name)
	c.StartControllerManagers(t, n)
}

// encryptionOn turns encryption on with provider p (v2, named kms), as
// docs/airgap.md says, with its blocks: p second everywhere, so that every
// API server reads what p writes, then first everywhere, each in a rolling
// restart; the check that each writes under p and key id, the migration
// of what was stored before, and the census: no plaintext left.
func encryptionOn(t testing.TB, c *Cluster, l *Load, p Provider, id, health string) {
	t.Helper()
	l.Phase("encryption on: kms second")
	rollingRestart(t, c, l, false, func(n *node) { c.MustRun(t, n, encRound1) })
	l.Phase("encryption on: kms first")
	rollingRestart(t, c, l, false, func(n *node) { c.MustRun(t, n, encRound2) })
	c.providers = []Provider{p}
	l.Phase("encryption on: check, migrate")
	checkWrites(t, c, p, id, health, false)
	census(t, c, "identity", false)
	migrate(t, c)
	c.MustRun(t, c.Nodes[0], encCensus)
	census(t, c, "identity", true)
}

// from2018 follows docs/rotation.md's "From the 2018 daemon" on the KMS v1
// cluster of provider p, whose one key is k1: round 1 puts each node's kms
// in --mode legacy, round 2 back to aesgcm, each with the page's blocks,
// one node at a time; the kubelet's part, restarting kms when its manifest
// changes, the drill does with the node out of the load. After each
// restart the node's writes are stored in its mode's format, and every
// node reads them: mid-round the nodes run both modes. Then the rollback
// the page gives from round 2, n2 back to legacy, and forward again. The
// drill runs no 2018 daemon: that it reads what legacy mode writes is
// src/cmd/kms's TestLegacyModeRounds, with a decoder of the 2018 format
// alone.
func from2018(t testing.TB, c *Cluster, l *Load, p Provider, k1 string) {
	t.Helper()
	legacy, aesgcm := p.API+":"+p.Name+":2018", p.API+":"+p.Name+":"+k1
	restart := func(i int, block BlockRef, stored string) {
		n := c.Nodes[i]
		c.MustRun(t, n, block)
		l.Drain(i)
		c.StopKMS(t, n)
		c.StartKMS(t, n)
		l.Undrain(i)
		crossRead(t, c, l.clients, i, stored)
	}
	l.Phase("from 2018: round 1, --mode legacy")
	for i, n := range c.Nodes {
		restart(i, legacyRound1, legacy)
		// "It must list one key, primary": the key the 2018 daemon had.
		if out := c.MustRun(t, n, legacyStatus); !strings.Contains(out, k1) {
			t.Fatalf("%s: kms status does not list %s:\n%s", n.name, k1, out)
		}
		if got := c.Status(t, n); !maps.Equal(got, Keys{k1: "primary"}) {
			t.Fatalf("%s: kms holds %v in round 1, want only %s, primary", n.name, got, k1)
		}
	}
	l.Phase("from 2018: round 2, aesgcm")
	for i := range c.Nodes {
		restart(i, legacyRound2, aesgcm)
	}
	l.Phase("from 2018: rollback of n2 to legacy, and forward")
	restart(1, legacyRound1, legacy)
	restart(1, legacyRound2, aesgcm)
}

// migrateToV2 moves every Secret from the KMS v1 provider v1 to a KMS v2
// provider, as docs/rotation.md ("From KMS v1 to KMS v2") says: the v2
// provider second, then first, each in a rolling restart; the migration;
// then v2 alone, without the KMSv1 feature gate.
func migrateToV2(t testing.TB, c *Cluster, l *Load, v1 Provider, id string) {
	t.Helper()
	v2 := Provider{"v2", "kms"}
	l.Phase("v1 to v2: v2 provider second")
	c.SetProviders(t, v1, v2)
	rollingRestart(t, c, l, false, nil)
	l.Phase("v1 to v2: v2 provider first")
	c.SetProviders(t, v2, v1)
	rollingRestart(t, c, l, false, nil)
	// With a v1 provider configured each has its own check
	// (kms-provider-N): /readyz runs them all.
	checkWrites(t, c, v2, id, "/readyz", false)
	l.Phase("v1 to v2: migrate")
	migrate(t, c)
	c.WantStored(t, v2, id, created)
	census(t, c, v1.Name, true)
	l.Phase("v1 to v2: v2 alone")
	c.SetProviders(t, v2)
	rollingRestart(t, c, l, false, nil)
	waitHealth(t, c, c.Nodes[0], "/readyz/kms-providers", true)
	readBack(t, c.Clients(t), l.Want())
	c.WantStored(t, v2, id, created)
}

// migrate rewrites every object of every encrypted resource under the
// key and provider the API servers now write with, with step 4 of
// docs/rotation.md: a StorageVersionMigration per resource the
// EncryptionConfiguration lists, which the leading kube-controller-manager
// runs through its API server, each then Succeeded.
func migrate(t testing.TB, c *Cluster) {
	t.Helper()
	began := time.Now()
	if _, _, code := c.Run(t, c.Nodes[0], rotMigrate); code != 0 {
		c.ShCode(t, "kubectl get storageversionmigrations -o yaml")
		t.Fatalf("storage version migrations did not all succeed")
	}
	t.Logf("migrations succeeded in %v", time.Since(began).Round(time.Second))
}

// census runs kek-census --require-none gone over the encrypted resources
// in the cluster's etcd (the others are plaintext by design): it must pass
// (exit 0) when clean, and otherwise fail naming objects.
func census(t testing.TB, c *Cluster, gone string, clean bool) {
	t.Helper()
	cmd := `kek-census --endpoints "$ETCDCTL_ENDPOINTS" --cacert "$ETCDCTL_CACERT" --cert "$ETCDCTL_CERT" --key "$ETCDCTL_KEY"`
	for _, r := range Resources {
		cmd += " --resource " + strings.TrimPrefix(r.Group+"/"+r.Resource, "/")
	}
	out, errOut, code := c.ShCode(t, cmd+" --require-none "+gone)
	if clean && code != 0 || !clean && (code != 1 || !strings.Contains(out+errOut, "/registry/")) {
		t.Fatalf("kek-census --require-none %s: exit %d, want %s:\n%s%s", gone, code, map[bool]string{true: "0", false: "1 naming objects"}[clean], out, errOut)
	}
}

// primary is the primary's key_id.
func primary(keys Keys) string {
	for id, role := range keys {
		if role == "primary" {
			return id
		}
	}
	return ""
}

// createSecrets creates n Secrets in namespace drill, a third through each
// API server.
func createSecrets(t testing.TB, l *Load, n int) {
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 6 {
				l.Create(i%3, "drill", fmt.Sprintf("drill-%04d", i))
			}
		}()
	}
	wg.Wait()
	if got := len(l.Want()); got < n {
		t.Fatalf("created %d of %d secrets", got, n)
	}
}

// rollingRestart restarts each node's API server and controller manager
// (and, when all, its kms and etcd member too), one node at a time, drained from the load
// meanwhile as a load balancer does; change (if any) changes the node
// first, as a page's step does on it. The other two etcd members keep the
// quorum. After each restart, every node must read what the restarted one
// writes: mid-way, the others still run the configuration it left.
func rollingRestart(t testing.TB, c *Cluster, l *Load, all bool, change func(*node)) {
	t.Helper()
	for i, n := range c.Nodes {
		if change != nil {
			change(n)
		}
		l.Drain(i)
		c.StopControllerManager(t, n)
		c.StopAPIServer(t, n)
		if all {
			c.StopKMS(t, n)
			c.StopEtcd(t, n)
			c.StartEtcd(t, n)
			c.StartKMS(t, n)
		}
		c.StartAPIServer(t, n)
		c.StartControllerManagers(t, n)
		l.Undrain(i)
		crossRead(t, c, l.clients, i, "")
	}
}

// crossRead writes a Secret through node w and reads it through every
// node; with stored, etcd must hold it there (see Stored).
func crossRead(t testing.TB, c *Cluster, clients []kubernetes.Interface, w int, stored string) {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("cross-read-n%d", w+1)
	sc := clients[w].CoreV1().Secrets("drill")
	if _, err := sc.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"v": []byte(name)}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("n%d, restarted: write: %s", w+1, describe(err))
	}
	if stored != "" {
		if got := c.StoredKey(t, "/registry/secrets/drill/"+name); got != stored {
			t.Fatalf("n%d writes under %s, want %s", w+1, got, stored)
		}
	}
	for r, k := range clients {
		if _, err := k.CoreV1().Secrets("drill").Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Fatalf("n%d cannot read what n%d writes since its restart: %s", r+1, w+1, describe(err))
		}
	}
	if err := sc.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("n%d: delete %s: %s", w+1, name, describe(err))
	}
}

// checkWrites checks that each API server writes under provider p and key
// id: with page, as step 3 of docs/rotation.md does (its block on each
// node, until it exits 0: the newest to_storage line of the API server's
// key_id metrics names id after a canary write); otherwise the drill
// writes the canary with kubectl. Either way the canary read back from
// etcd must be stored under p and id. A KMS v2 API server takes up a new
// key_id at its next Status call, at most a minute after the last (sooner
// when a /readyz probe, which the check sends, comes more than 20 s after
// the last); upstream bounds the change at 3 minutes (after which an API
// server that could not see the new key_id fails writes instead), so the
// check gives up after 3 minutes.
func checkWrites(t testing.TB, c *Cluster, p Provider, id, health string, page bool) {
	t.Helper()
	want := p.API + ":" + p.Name + ":" + id
	deadline := time.Now().Add(3 * time.Minute)
	pending := map[*node]bool{}
	for _, n := range c.Nodes {
		pending[n] = true
	}
	for len(pending) > 0 {
		for _, n := range c.Nodes {
			if !pending[n] {
				continue
			}
			c.Get(n.apiURL() + health)
			canary := "/registry/secrets/kube-system/kms-canary-" + n.name
			if page {
				if _, _, code := c.Run(t, n, rotCheck); code != 0 {
					continue
				}
				if got := c.StoredKey(t, canary); got != want {
					t.Fatalf("%s: rotation.md's check passed, but its canary is stored under %s, not %s", n.name, got, want)
				}
			} else {
				k := "kubectl --context " + n.name
				c.Sh(t, fmt.Sprintf("%s -n kube-system delete secret %s --ignore-not-found && %s -n kube-system create secret generic %s --from-literal=at=%d",
					k, path.Base(canary), k, path.Base(canary), time.Now().UnixNano()))
				if c.StoredKey(t, canary) != want {
					continue
				}
			}
			delete(pending, n)
		}
		if len(pending) > 0 && time.Now().After(deadline) {
			t.Fatalf("API servers still not writing under %s after 3 minutes: %v", want, pending)
		}
		if len(pending) > 0 {
			time.Sleep(2 * time.Second)
		}
	}
}

// waitHealth waits until n's API server check path answers 200 (ok) or
// not, and checks that the other API servers answer 200 meanwhile.
func waitHealth(t testing.TB, c *Cluster, n *node, path string, ok bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		code, body := c.Get(n.apiURL() + path)
		if (code == 200) == ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s still %d after 90 s: %s", n.name, path, code, body)
		}
		time.Sleep(time.Second)
	}
	// What an operator sees (docs/verify.md): its block where it names
	// the check.
	if path == "/readyz/kms-providers" {
		if _, _, code := c.Run(t, n, verReadyz); (code == 0) != ok {
			t.Fatalf("%s: verify.md's health check block exited %d, want success %v", n.name, code, ok)
		}
	} else if _, _, code := c.ShCode(t, fmt.Sprintf("kubectl --context %s get --raw '%s'", n.name, path)); (code == 0) != ok {
		t.Fatalf("kubectl get --raw %s exit %d, want success %v", path, code, ok)
	}
	for _, m := range c.Nodes {
		if m == n {
			continue
		}
		if code, body := c.Get(m.apiURL() + path); code != 200 {
			t.Fatalf("%s %s: %d while only %s was hit: %s", m.name, path, code, n.name, body)
		}
	}
}

// readBack lists the Secrets through every API server and compares them
// with what was written.
func readBack(t testing.TB, clients []kubernetes.Interface, want map[string]string) {
	t.Helper()
	for i, k := range clients {
		got := map[string]string{}
		for _, ns := range []string{"drill", "load"} {
			list, err := k.CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				t.Fatalf("n%d: list %s: %v", i+1, ns, err)
			}
			for _, s := range list.Items {
				got[ns+"/"+s.Name] = string(s.Data["v"])
			}
		}
		for name, v := range want {
			if got[name] != v {
				t.Fatalf("n%d: secret %s reads %q, want %q", i+1, name, got[name], v)
			}
		}
	}
}

// faults says which node each fault phase hits and which failures the
// calls through that node may see (as describe writes them); every other
// call must succeed.
var faults = map[string]struct {
	node    int
	allowed []*regexp.Regexp
}{
	"fault: kill -9 kms n2, its keyring lost": {1, []*regexp.Regexp{
		// KMS v1 only: each write calls Encrypt, a read whose DEK is not
		// cached calls Decrypt. (KMS v2 writes with its cached DEK seed and
		// reads with cached seeds: no call fails.)
		regexp.MustCompile(`^HTTP 500 InternalError: Internal error occurred: (StorageError: corrupt object, Code: 7, Key: /secrets/(drill|load)/…, ResourceVersion: 0, AdditionalErrorMsg: data from the storage is not transformable revision=0: )?rpc error: code = (Unavailable|DeadlineExceeded) desc = `),
	}},
	"fault: stop etcd n3": {2, []*regexp.Regexp{
		// client-go's own 10 s timeout: the API server waits for its etcd.
		regexp.MustCompile(`^(Get|Post) "[^"]*": (context deadline exceeded|net/http: request canceled)( \(Client\.Timeout exceeded while awaiting headers\))?$`),
		// Or the API server gives up on its etcd first (seen on a loaded
		// machine, a write through the faulted node).
		regexp.MustCompile(`^HTTP 504 Timeout: the server was unable to return a response in the time allotted, but may still be processing the request`),
	}},
	"fault: restart kube-apiserver n1": {0, []*regexp.Regexp{
		regexp.MustCompile(`^(Get|Post) "[^"]*": dial tcp …: connect: connection refused$`),
	}},
}

func checkFailures(t testing.TB, phases []*Phase) {
	t.Helper()
	for _, p := range phases {
		f, isFault := faults[p.Name]
		for node, errs := range p.Errors {
			for msg, n := range errs {
				ok := isFault && node == f.node
				if ok {
					ok = false
					for _, re := range f.allowed {
						ok = ok || re.MatchString(msg)
					}
				}
				if !ok {
					t.Errorf("%s: %d calls through n%d failed: %s", p.Name, n, node+1, msg)
				}
			}
		}
	}
}

// report stops the load and prints, phase by phase, the failures it saw,
// and the summary line.
func report(t testing.TB, api string, l *Load, began time.Time) {
	phases, written, total := l.Stop(), len(l.Want()), time.Since(began)
	var ops, fails int
	var parts []string
	for _, p := range phases {
		po, pf := 0, 0
		for i := range p.Ops {
			po += p.Ops[i]
			pf += p.Fails[i]
		}
		ops, fails = ops+po, fails+pf
		parts = append(parts, fmt.Sprintf("%s: %d ops %d failed %v", p.Name, po, pf, p.End.Sub(p.Start).Round(100*time.Millisecond)))
		for _, e := range p.ErrorList() {
			t.Logf("%s: %s", p.Name, e)
		}
		for i, s := range p.Samples {
			for _, m := range s {
				t.Logf("%s: n%d sample: %s", p.Name, i+1, m)
			}
		}
	}
	t.Logf("SUMMARY HA drill KMS %s: %d secrets (%d drill, %d load); %d ops, %d failed; %s; total %v",
		api, written, secrets, written-secrets, ops, fails, strings.Join(parts, "; "), total.Round(time.Second))
}

// recorder is a testing.TB that keeps what made the test fail.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	failures []string
}

func (r *recorder) keep(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, msg)
}

func (r *recorder) Error(args ...any) {
	r.TB.Helper()
	r.keep(fmt.Sprint(args...))
	r.TB.Error(args...)
}
func (r *recorder) Fatal(args ...any) {
	r.TB.Helper()
	r.keep(fmt.Sprint(args...))
	r.TB.Fatal(args...)
}
func (r *recorder) Errorf(format string, args ...any) {
	r.TB.Helper()
	r.keep(fmt.Sprintf(format, args...))
	r.TB.Errorf(format, args...)
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.TB.Helper()
	r.keep(fmt.Sprintf(format, args...))
	r.TB.Fatalf(format, args...)
}

// repeat logs the failures again.
func (r *recorder) repeat() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.failures {
		r.Logf("FAILED: %s", f)
	}
}
