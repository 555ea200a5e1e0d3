package cluster

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The operator's key commands, run as an operator runs them: kek-gen on
// the keyring files, kill -HUP to the daemons, kms status to see what each
// daemon holds. Until kek-gen --add-secondary/--promote/--retire and
// kms status exist on main, emulate.go stands in for them.

var keyIDPattern = regexp.MustCompile(`kek1-[0-9a-f]{32}`)

// AddSecondary adds a new random key, decrypt-only, to n's keyring and
// returns its key_id.
func (c *Cluster) AddSecondary(t testing.TB, n *node) string {
	t.Helper()
	if !c.haveKeyTools(t) {
		return emulateAddSecondary(t, n.keyring)
	}
	out := c.Sh(t, "kek-gen --add-secondary "+n.keyring)
	m := regexp.MustCompile(`added key_id (kek1-[0-9a-f]{32})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("kek-gen --add-secondary printed no key_id: %q", out)
	}
	return m[1]
}

// Promote makes id the primary key of n's keyring.
func (c *Cluster) Promote(t testing.TB, n *node, id string) {
	t.Helper()
	if !c.haveKeyTools(t) {
		emulateEdit(t, n.keyring, "promote", id)
		return
	}
	c.Sh(t, fmt.Sprintf("kek-gen --promote %s %s", id, n.keyring))
}

// Retire removes id from n's keyring.
func (c *Cluster) Retire(t testing.TB, n *node, id string) {
	t.Helper()
	if !c.haveKeyTools(t) {
		emulateEdit(t, n.keyring, "retire", id)
		return
	}
	c.Sh(t, fmt.Sprintf("kek-gen --retire %s %s", id, n.keyring))
}

// Reload sends SIGHUP to n's kms: it re-runs its command now.
func (c *Cluster) Reload(t testing.TB, n *node) {
	t.Helper()
	c.Sh(t, fmt.Sprintf("kill -HUP %d", n.kms.pid()))
}

// KeyStatus is what a running daemon holds.
type KeyStatus struct {
	Primary string
	Held    []string // every key_id, primary included; nil when emulated
	NKeys   int      // len(Held)
}

// Status asks n's running kms which keys it holds. It fails the test
// unless the daemon answers and is healthy.
func (c *Cluster) Status(t testing.TB, n *node) KeyStatus {
	t.Helper()
	if !c.haveKeyTools(t) {
		return c.emulateStatus(t, n)
	}
	out := c.Sh(t, "kms status --output json --endpoint unix://"+n.socket)
	// The JSON field names are the lead's to choose: take the primary from
	// the field whose name says so and every key_id anywhere.
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("kms status --output json: %v: %q", err, out)
	}
	var s KeyStatus
	for k, v := range doc {
		if id, ok := v.(string); ok && strings.Contains(strings.ToLower(k), "primary") && keyIDPattern.MatchString(id) {
			s.Primary = id
		}
	}
	for _, id := range keyIDPattern.FindAllString(out, -1) {
		if !slices.Contains(s.Held, id) {
			s.Held = append(s.Held, id)
		}
	}
	s.NKeys = len(s.Held)
	if s.Primary == "" {
		t.Fatalf("kms status names no primary key_id: %s", out)
	}
	return s
}

// WantKeys checks, with kms status on every node, that each daemon's
// primary is primary and that it holds the keys held (exactly those when
// exact: after a restart, retired keys are gone from memory too).
func (c *Cluster) WantKeys(t testing.TB, primary string, exact bool, held ...string) {
	t.Helper()
	for _, n := range c.Nodes {
		s := c.Status(t, n)
		ok := s.Primary == primary
		if s.Held != nil {
			for _, id := range held {
				ok = ok && slices.Contains(s.Held, id)
			}
			ok = ok && (!exact || s.NKeys == len(held))
		} else { // emulated: the daemon tells only how many
			ok = ok && (s.NKeys == len(held) || !exact && s.NKeys > len(held))
		}
		if !ok {
			t.Fatalf("%s: kms holds %+v; want primary %s, holding %v (exactly: %v)", n.name, s, primary, held, exact)
		}
	}
}

// haveKeyTools says whether kek-gen and kms have the rotation commands
// (kek-gen --add-secondary, kms status), checked once.
func (c *Cluster) haveKeyTools(t testing.TB) bool {
	t.Helper()
	if c.keyTools == nil {
		_, _, code := c.ShCode(t, "kms status --help >/dev/null 2>&1")
		help, _, _ := c.ShCode(t, "kek-gen --help 2>&1")
		have := code == 0 && strings.Contains(help, "--add-secondary")
		if !have {
			t.Logf("kek-gen --add-secondary/--promote/--retire or kms status missing: EMULATED by keyring edits (emulate.go)")
		}
		c.keyTools = &have
	}
	return *c.keyTools
}
