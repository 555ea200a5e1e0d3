// Package prometheus holds the alerting rules for the daemon's metrics and
// the per-node agent's scrape configuration; this test checks them with
// Prometheus's own promtool: that they load, and that each rule fires (and
// stays quiet) on the input series of its scenario in kms-alerts_test.yaml.
// With Prometheus itself installed, it also runs the scrape configuration as
// written against real daemons, and the rules on what the agents send.
package prometheus

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// tool finds Prometheus's program name (promtool, prometheus): $env, or else
// on $PATH. Without it the test skips.
func tool(t *testing.T, name, env string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found: install it from Debian's prometheus package or set $%s (.ci/run installs it)", name, env)
	}
	return p
}

func TestAlertRules(t *testing.T) {
	promtool := tool(t, "promtool", "PROMTOOL")
	for _, args := range [][]string{
		{"check", "rules", "kms-alerts.yaml"},
		{"test", "rules", "kms-alerts_test.yaml"},
		{"check", "config", "--agent", "kms-scrape.yaml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

// The Prometheus configurations docs/operating.md's "Metrics in HA" gives
// operators to paste: the receiver's rule_files (with this directory for the
// packages' /usr/share/kms/prometheus) and the scrape job for the node's
// address.
func TestPageConfigs(t *testing.T) {
	promtool := tool(t, "promtool", "PROMTOOL")
	page, err := os.ReadFile("../../../docs/operating.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(page), "\n## Metrics in HA\n")
	section, _, _ = strings.Cut(section, "\n## ")
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	n := 0
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1) {
		if !regexp.MustCompile(`(?m)^(global|rule_files|scrape_configs):`).MatchString(m[1]) {
			continue // the static pod's lines
		}
		n++
		conf := filepath.Join(dir, fmt.Sprintf("prometheus-%d.yml", n))
		write(t, conf, strings.ReplaceAll(m[1], "/usr/share/kms/prometheus/", here+"/"))
		if out, err := exec.Command(promtool, "check", "config", conf).CombinedOutput(); err != nil {
			t.Errorf("promtool check config on the page's configuration %d:\n%s\n%v\n%s", n, m[1], err, out)
		}
	}
	if n != 2 {
		t.Errorf("%d Prometheus configurations in docs/operating.md's Metrics in HA: want 2, the receiver's and the scrape job", n)
	}
}

// Two kms daemons with different keyrings; three agents run kms-scrape.yaml as
// shipped but for the target's port and the receiver's URL: c1/n1 and c1/n2
// scrape one daemon each, c2/n1 scrapes the second daemon again. A receiving
// Prometheus evaluates kms-alerts.yaml. The series it receives carry their
// agent's cluster and node, and only c1, whose two nodes hold different keys,
// alerts; then the second daemon stops, and both nodes it stood for alert.
func TestScrapeConfigAgents(t *testing.T) {
	prom := tool(t, "prometheus", "PROMETHEUS")
	dir := testbin.ShortDir(t)
	var kms []string // the daemons' health addresses
	var daemons []*testbin.Proc
	for _, name := range []string{"a", "b"} {
		ring := filepath.Join(dir, "kek-"+name)
		testbin.WriteKeyring(t, ring, testbin.NewKey())
		d := testbin.StartKMS(t, filepath.Join(dir, name+".sock"), "--command", "cat "+ring, "--health-address", "127.0.0.1:0")
		m := regexp.MustCompile(`serving /healthz, /readyz and /metrics" address=(\S+)`).FindStringSubmatch(d.Stderr())
		if m == nil {
			t.Fatalf("no health listener in the log:\n%s", d.Stderr())
		}
		kms = append(kms, m[1])
		daemons = append(daemons, d)
	}

	rules, err := filepath.Abs("kms-alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	receiverConf := filepath.Join(dir, "receiver.yaml")
	write(t, receiverConf, fmt.Sprintf("global:\n  evaluation_interval: 1s\nrule_files:\n  - %s\n", rules))
	receiver := "127.0.0.1:" + freePort(t)
	r := testbin.Start(t, exec.Command(prom, "--config.file="+receiverConf, "--web.enable-remote-write-receiver",
		"--web.listen-address="+receiver, "--storage.tsdb.path="+filepath.Join(dir, "receiver")), "")
	procs := []*testbin.Proc{r}
	waitReady(t, receiver, procs)

	shipped, err := os.ReadFile("kms-scrape.yaml")
	if err != nil {
		t.Fatal(err)
	}
	agentFlags := []string{"--agent"}
	if out, _ := exec.Command(prom, "--version").CombinedOutput(); strings.Contains(string(out), "version 2.") {
		agentFlags = []string{"--enable-feature=agent,expand-external-labels"}
	}
	for _, a := range []struct{ cluster, node, kms string }{{"c1", "n1", kms[0]}, {"c1", "n2", kms[1]}, {"c2", "n1", kms[1]}} {
		name := a.cluster + "-" + a.node
		conf := filepath.Join(dir, name+".yaml")
		write(t, conf, strings.NewReplacer("127.0.0.1:9464", a.kms, "https://PROMETHEUS/", "http://"+receiver+"/").Replace(string(shipped)))
		cmd := exec.Command(prom, append(agentFlags, "--config.file="+conf, "--web.listen-address=127.0.0.1:0",
			"--storage.agent.path="+filepath.Join(dir, name))...)
		cmd.Env = append(os.Environ(), "KMS_CLUSTER="+a.cluster, "KMS_NODE="+a.node)
		procs = append(procs, testbin.Start(t, cmd, ""))
	}

	want := []string{"c1 n1 kms", "c1 n2 kms", "c2 n1 kms"}
	poll(t, procs, fmt.Sprintf("the series of every agent (cluster node job: %q)", want), func() (bool, any) {
		got := labels(t, receiver, `kms_kek_loaded == 1`, "cluster", "node", "job")
		return reflect.DeepEqual(got, want), got
	})
	// Each daemon's one key is its primary: c1's two nodes differ, c2's one node
	// holds the same key as c1's n2.
	primaries := map[string]string{}
	for _, s := range labels(t, receiver, `kms_kek_key_info{role="primary"}`, "cluster", "node", "key_id") {
		f := strings.Fields(s)
		primaries[f[0]+" "+f[1]] = f[2]
	}
	if primaries["c1 n1"] == primaries["c1 n2"] || primaries["c2 n1"] != primaries["c1 n2"] {
		t.Fatalf("primary key_ids by node %v: want c1's two differ, c2's the same as c1 n2's", primaries)
	}
	// Pending or firing: the receiver has had the series for less than the rules' for:.
	wantAlerts := []string{
		"KMSPluginPrimaryKeyNotEverywhere c1 " + primaries["c1 n1"],
		"KMSPluginPrimaryKeyNotEverywhere c1 " + primaries["c1 n2"],
		"KMSPluginPrimaryKeysDiffer c1 ",
	}
	sort.Strings(wantAlerts)
	poll(t, procs, fmt.Sprintf("the alerts %q and no other", wantAlerts), func() (bool, any) {
		got := labels(t, receiver, `ALERTS`, "alertname", "cluster", "key_id")
		return reflect.DeepEqual(got, wantAlerts), got
	})

	// The second daemon stops: the agents' failed scrapes (up 0) name its two
	// nodes, and with its series gone c1's nodes no longer differ.
	if code := daemons[1].Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("kms exited %d on SIGTERM", code)
	}
	wantAlerts = []string{"KMSPluginDown c1 n2", "KMSPluginDown c2 n1"}
	poll(t, procs, fmt.Sprintf("the alerts %q and no other", wantAlerts), func() (bool, any) {
		got := labels(t, receiver, `ALERTS`, "alertname", "cluster", "node")
		return reflect.DeepEqual(got, wantAlerts), got
	})
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// freePort is a loopback port free a moment ago, for Prometheus, which does
// not log the port it got for :0.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

func waitReady(t *testing.T, addr string, procs []*testbin.Proc) {
	t.Helper()
	poll(t, procs, "the receiver's /-/ready", func() (bool, any) {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// poll checks cond every second, for as long as agents take to scrape (every
// 15 s, from a random offset) and send (every few seconds). cond also returns
// what it saw, for the failure message, which has the Prometheus logs too.
func poll(t *testing.T, procs []*testbin.Proc, what string, cond func() (bool, any)) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, p := range procs {
				fmt.Fprintf(&logs, "\n%v:\n%s", p.Cmd.Args, p.Stderr())
			}
			t.Fatalf("timed out waiting for %s; last saw %q; the logs:%s", what, saw, logs.String())
		}
	}
}

// labels runs an instant query at addr and returns, for each series of the
// result, the values of names joined by spaces, sorted.
func labels(t *testing.T, addr, query string, names ...string) []string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Error  string
		Data   struct {
			Result []struct{ Metric map[string]string }
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		t.Fatalf("query %s: %v %s %s", query, err, r.Status, r.Error)
	}
	s := []string{}
	for _, m := range r.Data.Result {
		v := make([]string, len(names))
		for i, n := range names {
			v[i] = m.Metric[n]
		}
		s = append(s, strings.Join(v, " "))
	}
	sort.Strings(s)
	return s
}
