package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// Provider is one provider of the EncryptionConfiguration: a KMS provider,
// or Identity (plaintext).
type Provider struct {
	API  string // "v1" or "v2"; "" for Identity
	Name string
}

// Identity is the provider that stores plaintext. Every configuration
// lists it, last unless placed earlier: it reads what was written before
// encryption was turned on.
var Identity = Provider{}

// prefix is how values it wrote start in etcd.
func (p Provider) prefix() string { return "k8s:enc:kms:" + p.API + ":" + p.Name + ":" }

// encryptionConfig is where each node's kube-apiserver reads its
// EncryptionConfiguration (docs/airgap.md).
const encryptionConfig = "/etc/kubernetes/enc/encryption-config.yaml"

// Resources are what the EncryptionConfiguration encrypts: two built-in
// resources and the drill's custom resource (crd.yaml), as group/resource
// is named in etcd keys and StorageVersionMigrations.
var Resources = []GroupResource{{"", "secrets"}, {"", "configmaps"}, {"drill.kms.test", "credentials"}}

// GroupResource is a resource of an API group ("" for the core group).
type GroupResource struct{ Group, Resource string }

// String is the resource as an EncryptionConfiguration names it.
func (r GroupResource) String() string {
	if r.Group == "" {
		return r.Resource
	}
	return r.Resource + "." + r.Group
}

// etcdPrefix is where kube-apiserver keeps the resource's objects.
func (r GroupResource) etcdPrefix() string {
	if r.Group == "" {
		return "/registry/" + r.Resource + "/"
	}
	return "/registry/" + r.Group + "/" + r.Resource + "/"
}

// Cluster is three nodes, each an etcd member, a kms daemon, a
// kube-apiserver and a kube-controller-manager; every API server talks to
// its own node's etcd member and kms socket, and every controller manager
// to its own node's API server, as in kubeadm's stacked topology. Each
// node's API server and controller manager run in a UTS namespace of their
// own, with the node's name as hostname: on one machine they would
// otherwise share one identity (the API servers' identity leases, the
// controller managers' leader election).
type Cluster struct {
	Dir       string // short, for unix sockets; its nN/ are the nodes
	Nodes     []*node
	bin       string
	pki       *pki
	env       []string
	providers []Provider // first writes
	http      *http.Client
	blocks    []Block // of the pages the drill follows
	ran       runs
	notes     string // the pages' variables, carried between blocks
	bundleDir string // the release bundle, unpacked: airgap.md's blocks run there
}

type node struct {
	name, ip, dir               string
	root                        string // what the node's processes see as /
	etcdPort, peerPort, apiPort int
	etcd, kms, api, kcm         *proc
}

func (n *node) apiURL() string  { return fmt.Sprintf("https://%s:%d", n.ip, n.apiPort) }
func (n *node) etcdURL() string { return fmt.Sprintf("https://%s:%d", n.ip, n.etcdPort) }

// Peers talk plain HTTP: the pages never reach them.
func (n *node) peerURL() string { return fmt.Sprintf("http://%s:%d", n.ip, n.peerPort) }

// healthAddr is the node's kms health address: the static pod's
// 127.0.0.1:9464 would be the same for the three nodes on one host, so the
// drill gives each kms its node's address, with the pod's port.
func (n *node) healthAddr() string { return n.ip + ":9464" }

// keyring is the node's keyring on the host.
func (n *node) keyring() string { return n.path("/etc/kubernetes/kms/kek") }
func (n *node) log(what string) string {
	return filepath.Join(n.dir, what+".log")
}

// New lays out a cluster of three nodes whose encrypted resources go to
// providers (all served by each node's kms; none: plaintext): each node as
// kubeadm lays it out, then kms deployed as airgap.md's Deploy says, the
// first node's keyring copied to the others. Start starts it. The pages'
// blocks must all be in the drill's table (Coverage), or New fails.
func New(t testing.TB, providers ...Provider) *Cluster {
	t.Helper()
	blocks, err := pageBlocks()
	if err != nil {
		t.Fatal(err)
	}
	// n1's etcd member answers there too, as a kubeadm node's does for the
	// pages' kek-census and etcdctl.
	if l, err := net.Listen("tcp", "127.0.0.1:2379"); err != nil {
		t.Fatalf("127.0.0.1:2379 must be free for the drill's etcd: %v", err)
	} else {
		l.Close()
	}
	dir, err := os.MkdirTemp("/tmp", "cl")
	if err != nil {
		t.Fatal(err)
	}
	mountpoints(t)
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, dir)
			t.Logf("cluster files kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	bin := BinDir(t)
	c := &Cluster{Dir: dir, bin: bin, pki: newPKI(t), providers: providers, blocks: blocks, notes: filepath.Join(dir, "notes.sh")}
	var etcds []string
	for i := 1; i <= 3; i++ {
		n := &node{name: fmt.Sprintf("n%d", i), ip: fmt.Sprintf("127.0.0.%d", 10+i)}
		n.dir = filepath.Join(dir, n.name)
		n.root = filepath.Join(n.dir, "root")
		if err := os.Mkdir(n.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		n.etcdPort, n.peerPort, n.apiPort = freePort(t, n.ip), freePort(t, n.ip), freePort(t, n.ip)
		c.layout(t, n)
		c.Nodes = append(c.Nodes, n)
		etcds = append(etcds, n.etcdURL())
	}
	// The drill's own view of etcd and the API servers, from the host.
	n1pki := c.Nodes[0].path("/etc/kubernetes/pki/etcd/healthcheck-client")
	cert, err := tls.LoadX509KeyPair(n1pki+".crt", n1pki+".key")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.pki.caPEM)
	c.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	c.pki.kubeconfig(t, kubeconfig, c.Nodes)
	c.env = append(os.Environ(),
		"PATH="+bin+":"+os.Getenv("PATH"),
		"KUBECONFIG="+kubeconfig,
		"ETCDCTL_ENDPOINTS="+strings.Join(etcds, ","),
		"ETCDCTL_CACERT="+c.Nodes[0].path("/etc/kubernetes/pki/etcd/ca.crt"),
		"ETCDCTL_CERT="+n1pki+".crt",
		"ETCDCTL_KEY="+n1pki+".key",
	)

	// The pages' inputs: the registry the static pod's image comes from (a
	// name only: the drill runs the image's binaries), and the resources
	// the EncryptionConfiguration encrypts.
	var rs []string
	for _, r := range Resources {
		rs = append(rs, r.String())
	}
	writeFile(t, c.notes, []byte(fmt.Sprintf("REGISTRY=registry.drill.invalid\nRESOURCES='%s'\n", strings.Join(rs, " "))))
	c.bundleDir = c.bundle(t)
	for _, n := range c.Nodes {
		c.MustRun(t, n, deployEach)
	}
	c.MustRun(t, c.Nodes[0], deployFirst)
	for _, n := range c.Nodes[1:] {
		c.copyKeyring(t, n)
	}
	for _, n := range c.Nodes {
		c.writeEncryptionConfig(t, n)
	}
	return c
}

// copyKeyring copies the first node's keyring to n, keeping its mode and
// owner, atomically, as a configuration management tool would distribute
// it.
func (c *Cluster) copyKeyring(t testing.TB, n *node) {
	t.Helper()
	c.Sh(t, fmt.Sprintf("cp -p %s %s.new && mv %s.new %s", c.Nodes[0].keyring(), n.keyring(), n.keyring(), n.keyring()))
}

// freePort finds a port free on ip. Another process could take it before
// it is used; on a test machine's loopback addresses that does not happen.
func freePort(t testing.TB, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// SetProviders rewrites every node's EncryptionConfiguration; API servers
// read it when they (re)start.
func (c *Cluster) SetProviders(t testing.TB, providers ...Provider) {
	t.Helper()
	c.providers = providers
	for _, n := range c.Nodes {
		c.writeEncryptionConfig(t, n)
	}
}

// writeEncryptionConfig is release/deploy/encryption-config-v{1,2}.yaml
// with the drill's Resources and the cluster's providers, Identity last
// unless listed.
func (c *Cluster) writeEncryptionConfig(t testing.TB, n *node) {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n")
	for _, r := range Resources {
		fmt.Fprintf(&b, "      - %s\n", r)
	}
	b.WriteString("    providers:\n")
	providers := c.providers
	if !slices.Contains(providers, Identity) {
		providers = append(slices.Clone(providers), Identity)
	}
	for _, p := range providers {
		if p == Identity {
			b.WriteString("      - identity: {}\n")
			continue
		}
		fmt.Fprintf(&b, "      - kms:\n          apiVersion: %s\n          name: %s\n          endpoint: unix:///run/kms/kms.sock\n          timeout: 3s\n", p.API, p.Name)
		if p.API == "v1" {
			b.WriteString("          cachesize: 1000\n")
		}
	}
	writeFile(t, n.path(encryptionConfig), []byte(b.String()))
}

// Start starts the etcd members, then the kms daemons, then the API
// servers, then the controller managers, and waits until all are ready.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	c.StartEtcd(t, c.Nodes...)
	c.StartKMS(t, c.Nodes...)
	c.StartAPIServer(t, c.Nodes...)
	c.StartControllerManagers(t, c.Nodes...)
	// Each API server's identity lease is its own.
	c.waitLeases(t, "apiserver.kubernetes.io/identity=kube-apiserver", 3)
}

// StartEtcd starts the etcd members of nodes, all before waiting for any:
// a new cluster becomes ready only once a quorum of it runs.
func (c *Cluster) StartEtcd(t testing.TB, nodes ...*node) {
	t.Helper()
	var peers []string
	for _, m := range c.Nodes {
		peers = append(peers, m.name+"="+m.peerURL())
	}
	for _, n := range nodes {
		listen, pki := n.etcdURL(), n.path("/etc/kubernetes/pki/etcd")
		if n == c.Nodes[0] {
			listen += ",https://127.0.0.1:2379"
		}
		n.etcd = start(t, "etcd "+n.name, n.log("etcd"), []string{
			filepath.Join(c.bin, "etcd"),
			"--name", n.name,
			"--data-dir", filepath.Join(n.dir, "etcd"),
			"--listen-client-urls", listen, "--advertise-client-urls", n.etcdURL(),
			"--client-cert-auth", "--trusted-ca-file", pki + "/ca.crt",
			"--cert-file", pki + "/server.crt", "--key-file", pki + "/server.key",
			"--listen-peer-urls", n.peerURL(), "--initial-advertise-peer-urls", n.peerURL(),
			"--initial-cluster", strings.Join(peers, ","),
			"--initial-cluster-state", "new", "--initial-cluster-token", "kms-drill",
		})
	}
	for _, n := range nodes {
		c.waitHTTP(t, n.etcd, n.etcdURL()+"/health", 2*time.Minute)
	}
}

// StartKMS starts the kms daemons of nodes and waits until they are ready.
func (c *Cluster) StartKMS(t testing.TB, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		n.kms = start(t, "kms "+n.name, n.log("kms"), c.kmsArgv(t, n))
	}
	for _, n := range nodes {
		c.waitHTTP(t, n.kms, "http://"+n.healthAddr()+"/readyz", time.Minute)
	}
}

// StartKMSFailing starts n's kms and checks that it exits with an error
// and with want in its log, as it must when its KEK command fails at start.
func (c *Cluster) StartKMSFailing(t testing.TB, n *node, want string) {
	t.Helper()
	p := start(t, "kms "+n.name, n.log("kms"), c.kmsArgv(t, n))
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		t.Fatalf("%s still runs a minute after start; want it to fail with %q", p.name, want)
	}
	if code, log := p.cmd.ProcessState.ExitCode(), tail(p.log, 10); code == 0 || !strings.Contains(log, want) {
		t.Fatalf("%s exited %d; want an error and %q in its log:\n%s", p.name, code, want, log)
	}
}

// kmsArgv runs the kms static pod of node n as its manifest says: its
// arguments, its user and group, its keyring directory at /etc/kms. Two
// things differ, both said in airgap.md: the image's binaries are the
// drill's (the image's /usr/bin is BinDir), and the health address is the
// node's (see healthAddr).
func (c *Cluster) kmsArgv(t testing.TB, n *node) []string {
	t.Helper()
	ctr, sc := n.kmsPod(t)
	argv := []string{"setpriv", "--reuid", fmt.Sprint(*sc.RunAsUser), "--regid", fmt.Sprint(*sc.RunAsGroup), "--clear-groups", "--pdeathsig", "KILL", filepath.Join(c.bin, "kms")}
	for _, a := range ctr.Args {
		a = strings.ReplaceAll(a, "/usr/bin/", c.bin+"/")
		if a == "--health-address=127.0.0.1:9464" {
			a = "--health-address=" + n.healthAddr()
		}
		argv = append(argv, a)
	}
	return n.ns(podMounts, argv)
}

// StartAPIServer starts the API servers of nodes and waits until their
// /readyz answers 200.
func (c *Cluster) StartAPIServer(t testing.TB, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		c.startAPIServer(t, n)
	}
	for _, n := range nodes {
		c.waitHTTP(t, n.api, n.apiURL()+"/readyz", 2*time.Minute)
	}
}

// startAPIServer starts n's API server, with a manifest that says how.
func (c *Cluster) startAPIServer(t testing.TB, n *node) {
	t.Helper()
	args := []string{
		filepath.Join(c.bin, "kube-apiserver"),
		"--etcd-servers=" + n.etcdURL(),
		"--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt",
		"--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt",
		"--etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key",
		"--encryption-provider-config=" + encryptionConfig,
		"--bind-address=" + n.ip, "--advertise-address=" + n.ip,
		"--secure-port=" + fmt.Sprint(n.apiPort),
		"--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
		"--tls-private-key-file=/etc/kubernetes/pki/apiserver.key",
		"--token-auth-file=/etc/kubernetes/pki/tokens.csv",
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=/etc/kubernetes/pki/sa.key",
		"--service-account-signing-key-file=/etc/kubernetes/pki/sa.key",
		"--api-audiences=https://kubernetes.default.svc",
		// Configuration only: nothing is sent to this range.
		"--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none",
	}
	for _, p := range c.providers {
		if p.API == "v1" {
			args = append(args, "--feature-gates=KMSv1=true")
			break
		}
	}
	n.apiServerManifest(t, k8sVersion, args)
	n.api = start(t, "kube-apiserver "+n.name, n.log("kube-apiserver"), n.ns(nil, args))
}

// StartControllerManagers starts the kube-controller-managers of nodes and
// waits until one of them leads. Each runs the controllers storage version
// migration needs (the migrator and the garbage collector, whose informers
// it reads), not every default one: they would only load the machine. A
// controller manager exits when it cannot renew its lease, as a leader
// does while its API server restarts: the drill restarts a node's with its
// API server, as a kubelet would, and its lease outlasts the shorter
// faults.
func (c *Cluster) StartControllerManagers(t testing.TB, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		n.kcm = start(t, "kube-controller-manager "+n.name, n.log("kube-controller-manager"), n.ns(nil, []string{
			filepath.Join(c.bin, "kube-controller-manager"),
			"--kubeconfig", "/etc/kubernetes/controller-manager.conf",
			"--secure-port", "0",
			"--controllers", "garbage-collector-controller,storage-version-migrator-controller",
			"--leader-elect-lease-duration", "60s",
			"--leader-elect-renew-deadline", "45s",
		}))
	}
	c.waitLeases(t, "kube-controller-manager", 1)
}

// StopControllerManager stops n's kube-controller-manager gracefully.
func (c *Cluster) StopControllerManager(t testing.TB, n *node) {
	t.Helper()
	n.kcm.stop(t, syscall.SIGTERM)
}

// waitLeases waits until the Leases of kube-system that sel selects (a
// name, or a label selector) are held by want distinct nodes: the hostname
// of the holder's UTS namespace is the label kubernetes.io/hostname of an
// API server's identity lease, and starts the holder identity of a leader
// election's.
func (c *Cluster) waitLeases(t testing.TB, sel string, want int) {
	t.Helper()
	url := c.Nodes[0].apiURL() + "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
	if strings.Contains(sel, "=") {
		url += "?labelSelector=" + sel
	} else {
		url += "?fieldSelector=metadata.name=" + sel
	}
	holder := regexp.MustCompile(`^(n[1-3])_`)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		code, body := c.Get(url)
		var list struct {
			Items []struct {
				Metadata struct{ Labels map[string]string }
				Spec     struct{ HolderIdentity string }
			}
		}
		held := map[string]bool{}
		if code == http.StatusOK && json.Unmarshal([]byte(body), &list) == nil {
			for _, l := range list.Items {
				if h := l.Metadata.Labels["kubernetes.io/hostname"]; h != "" {
					held[h] = true
				} else if m := holder.FindStringSubmatch(l.Spec.HolderIdentity); m != nil {
					held[m[1]] = true
				}
			}
		}
		if len(held) == want {
			t.Logf("leases %s held by %v", sel, slices.Sorted(maps.Keys(held)))
			return
		}
		for _, n := range c.Nodes {
			for _, p := range []*proc{n.api, n.kcm} {
				if p != nil && !p.running() {
					t.Fatalf("%s exited (%v):\n%s", p.name, p.cmd.ProcessState, tail(p.log, 30))
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("leases %s: held by %v after 2 minutes, want %d nodes: %d %s", sel, held, want, code, body)
		}
		time.Sleep(time.Second)
	}
}

// StopAPIServer stops n's API server gracefully.
func (c *Cluster) StopAPIServer(t testing.TB, n *node) { t.Helper(); n.api.stop(t, syscall.SIGTERM) }

// StopKMS stops n's kms daemon gracefully.
func (c *Cluster) StopKMS(t testing.TB, n *node) { t.Helper(); n.kms.stop(t, syscall.SIGTERM) }

// StopEtcd stops n's etcd member gracefully.
func (c *Cluster) StopEtcd(t testing.TB, n *node) { t.Helper(); n.etcd.stop(t, syscall.SIGTERM) }

// waitHTTP waits until url answers 200 (API servers with the admin token),
// failing early if p exits.
func (c *Cluster) waitHTTP(t testing.TB, p *proc, url string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		code, body := c.Get(url)
		if code == http.StatusOK {
			return
		}
		if !p.running() {
			t.Fatalf("%s exited (%v) before %s answered 200:\n%s", p.name, p.cmd.ProcessState, url, tail(p.log, 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 within %v: %d %s", url, limit, code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Get fetches url (with the admin token for the API servers) and returns
// the status code (0 when there was no answer) and the body.
func (c *Cluster) Get(url string) (int, string) {
	req, _ := http.NewRequestWithContext(context.Background(), "GET", url, nil)
	if strings.HasPrefix(url, "https:") {
		req.Header.Set("Authorization", "Bearer "+c.pki.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Sh runs cmdline with /bin/sh, with the binaries first on PATH, KUBECONFIG
// and ETCDCTL_ENDPOINTS set, as an operator would type it; it fails the
// test unless the command exits 0, and returns its stdout.
func (c *Cluster) Sh(t testing.TB, cmdline string) string {
	t.Helper()
	out, errOut, code := c.ShCode(t, cmdline)
	if code != 0 {
		t.Fatalf("$ %s\nexit %d\n%s%s", cmdline, code, out, errOut)
	}
	return out
}

// ShCode is Sh that returns the exit code and stderr instead of failing.
func (c *Cluster) ShCode(t testing.TB, cmdline string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", cmdline)
	cmd.Env = c.env
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	code = cmd.ProcessState.ExitCode()
	shown := out.String()
	if code != 0 {
		shown += errOut.String()
	}
	t.Logf("$ %s  # exit %d%s", cmdline, code, indent(shown, 6))
	return out.String(), errOut.String(), code
}

// indent shows the first lines of a command's output under it.
func indent(s string, maxLines int) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r == utf8.RuneError || r < ' ' && r != '\n' && r != '\t' }) {
		return fmt.Sprintf("\n    (%d bytes, binary)", len(s))
	}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if len(l) > 200 {
			lines[i] = fmt.Sprintf("%s… (%d bytes)", l[:200], len(l))
		}
	}
	more := ""
	if len(lines) > maxLines {
		more = fmt.Sprintf("\n    … %d more lines", len(lines)-maxLines)
		lines = lines[:maxLines]
	}
	return "\n    " + strings.Join(lines, "\n    ") + more
}
