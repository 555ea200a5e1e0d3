// Package grafana holds the Grafana dashboard for the daemon's metrics
// (kms.json). Its test checks that the dashboard is well formed, that every
// query parses as PromQL (with Prometheus's own promtool) and keeps clusters
// apart, and that every metric a query names is one a running daemon exports.
package grafana

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// dashboard is the part of Grafana's dashboard model the test reads.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *datasource              `json:"datasource"`
	GridPos    struct{ X, Y, W, H int } `json:"gridPos"`
	Targets    []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// The panel types of Grafana 10/11 the dashboard may use.
var panelTypes = map[string]bool{"row": true, "stat": true, "table": true, "bargauge": true, "timeseries": true}

func load(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("kms.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	var d dashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("kms.json: %v", err)
	}
	return d
}

// queries returns each PromQL query of the dashboard by where it is.
func queries(t *testing.T, d dashboard) map[string]string {
	t.Helper()
	q := map[string]string{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			q[fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID)] = tg.Expr
		}
	}
	return q
}

// Grafana's model: what an import needs and what keeps the layout sane.
// (No Grafana can be installed here: Debian does not package it, and npm's
// @grafana/schema has TypeScript types, no JSON schema; see docs/operating.md.)
func TestDashboardModel(t *testing.T) {
	d := load(t)
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 36 {
		t.Errorf("title %q, uid %q, schemaVersion %d: want all set (schemaVersion >= 36: datasource references by uid)", d.Title, d.UID, d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["cluster"] != "query" || vars["node"] != "query" {
		t.Errorf("variables %v: want datasource (datasource), cluster and node (query)", vars)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("%s: id missing or not unique", where)
		}
		ids[p.ID] = true
		if !panelTypes[p.Type] || p.Title == "" {
			t.Errorf("%s: type %q", where, p.Type)
		}
		if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v outside Grafana's 24 columns", where, g)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("%s: want the ${datasource} Prometheus and at least one target", where)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("%s: target %q: empty query or refId, or refId not unique", where, tg.RefID)
			}
			refs[tg.RefID] = true
			for _, v := range regexp.MustCompile(`\$\{?(\w+)`).FindAllStringSubmatch(tg.Expr, -1) {
				if _, ok := vars[v[1]]; !ok && v[1] != "__rate_interval" {
					t.Errorf("%s: target %s uses $%s, which the dashboard does not define", where, tg.RefID, v[1])
				}
			}
		}
	}
}

// promQL is a query with Grafana's variables replaced as Grafana would.
func promQL(q string) string {
	return strings.NewReplacer("$__rate_interval", "5m", "$cluster", ".*", "$node", ".*").Replace(q)
}

// aggregation is a PromQL aggregation operator, with its by clause if it has one.
var aggregation = regexp.MustCompile(`\b(sum|count|max|min|avg|group|stddev|stdvar|topk|bottomk|quantile|count_values)\s*(by|without)?\s*(\([^()]*\))?\s*\(`)

// One Prometheus may hold several clusters (kms-scrape.yaml): every query
// keeps to the selected ones, and every aggregation keeps them apart, so that
// "All" never adds one cluster's nodes to another's.
func TestQueriesKeepClustersApart(t *testing.T) {
	for where, q := range queries(t, load(t)) {
		for _, sel := range regexp.MustCompile(`\bkms_\w+(\{[^}]*\})?`).FindAllStringSubmatch(q, -1) {
			if !strings.Contains(sel[1], `cluster=~"$cluster"`) || !strings.Contains(sel[1], `node=~"$node"`) {
				t.Errorf("%s: %s does not select $cluster and $node", where, sel[0])
			}
		}
		for _, agg := range aggregation.FindAllStringSubmatch(q, -1) {
			if agg[2] != "by" || !regexp.MustCompile(`[(,]\s*cluster\s*[,)]`).MatchString(agg[3]) {
				t.Errorf("%s: %q aggregates the clusters together: want by (cluster, ...)", where, strings.TrimSpace(strings.TrimSuffix(agg[0], "(")))
			}
		}
	}
}

// Every query parses: promtool checks them as the expressions of recording
// rules, which it parses with Prometheus's own parser.
func TestQueriesParse(t *testing.T) {
	tool := os.Getenv("PROMTOOL")
	if tool == "" {
		var err error
		if tool, err = exec.LookPath("promtool"); err != nil {
			t.Skip("promtool not found: install it from Debian's prometheus package or set $PROMTOOL (.ci/run installs it)")
		}
	}
	q := queries(t, load(t))
	names := make([]string, 0, len(q))
	for where := range q {
		names = append(names, where)
	}
	sort.Strings(names)
	rules := "groups:\n  - name: dashboard\n    rules:\n"
	for i, where := range names {
		expr, _ := json.Marshal(promQL(q[where])) // a JSON string is a YAML string
		rules += fmt.Sprintf("      - record: dashboard_query_%d\n        expr: %s\n", i, expr)
	}
	file := filepath.Join(t.TempDir(), "queries.yaml")
	if err := os.WriteFile(file, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool, "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s\n(rule i is the query of %v[i])", err, out, names)
	}
	if !strings.Contains(string(out), fmt.Sprintf("%d rules found", len(names))) {
		t.Fatalf("promtool found other than %d rules:\n%s", len(names), out)
	}
}

// metricName is a kms metric in a query: every series the daemon exports is
// named kms_*, and no PromQL function, keyword or label of the dashboard is.
var metricName = regexp.MustCompile(`\bkms_[a-zA-Z0-9_]*`)

// Every metric a query names is in a running daemon's /metrics, after a
// KMS v2 call (counters and histograms by method exist only once used).
func TestQueriesNameExportedMetrics(t *testing.T) {
	dir := testbin.ShortDir(t)
	ring := filepath.Join(dir, "kek")
	testbin.WriteKeyring(t, ring, testbin.NewKey(), testbin.NewKey())
	sock := filepath.Join(dir, "kms.sock")
	d := testbin.StartKMS(t, sock, "--command", "cat "+ring, "--health-address", "127.0.0.1:0")
	conn := testbin.Dial(t, sock)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := v2.NewKeyManagementServiceClient(conn).Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("dek"), Uid: "1"}); err != nil {
		t.Fatalf("Encrypt: %v\n%s", err, d.Stderr())
	}
	m := regexp.MustCompile(`serving /healthz, /readyz and /metrics" address=(\S+)`).FindStringSubmatch(d.Stderr())
	if m == nil {
		t.Fatalf("no health listener in the log:\n%s", d.Stderr())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			exported[strings.FieldsFunc(l, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
		}
	}
	d0 := load(t)
	all := queries(t, d0)
	for _, v := range d0.Templating.List {
		all["variable "+v.Name] = string(v.Query)
	}
	used := map[string]bool{}
	for where, q := range all {
		names := metricName.FindAllString(q, -1)
		if len(names) == 0 && strings.HasPrefix(where, "panel") {
			t.Errorf("%s: %q names no kms metric", where, q)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] {
				t.Errorf("%s: %s is not in the daemon's /metrics", where, n)
			}
		}
	}
	t.Logf("metrics the dashboard uses: %v", keys(used))
}

func keys(m map[string]bool) []string {
	s := make([]string, 0, len(m))
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}
