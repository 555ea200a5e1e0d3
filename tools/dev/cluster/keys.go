package cluster

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"testing"
	"time"
)

// The operator's key commands (docs/rotation.md), run as an operator runs
// them: kek-gen on a node's keyring file, kms refresh or kill -HUP to make
// its daemon read it now, kms status to see what the daemon holds.

// AddSecondary adds a new random key, decrypt-only, to n's keyring and
// returns its key_id.
func (c *Cluster) AddSecondary(t testing.TB, n *node) string {
	t.Helper()
	out := c.Sh(t, "kek-gen --add-secondary "+n.keyring)
	m := regexp.MustCompile(`added key_id (kek1-[0-9a-f]{32}) \(decrypt only\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("kek-gen --add-secondary printed no key_id: %q", out)
	}
	return m[1]
}

// Promote makes id the primary key of n's keyring.
func (c *Cluster) Promote(t testing.TB, n *node, id string) {
	t.Helper()
	c.Sh(t, fmt.Sprintf("kek-gen --promote %s %s", id, n.keyring))
}

// Retire removes id from n's keyring.
func (c *Cluster) Retire(t testing.TB, n *node, id string) {
	t.Helper()
	c.Sh(t, fmt.Sprintf("kek-gen --retire %s %s", id, n.keyring))
}

// distribute copies the first node's keyring to the others and has every
// daemon read it, as step 1 of docs/rotation.md says.
func (c *Cluster) distribute(t testing.TB) {
	t.Helper()
	for _, n := range c.Nodes {
		if n != c.Nodes[0] {
			c.copyKeyring(t, n)
		}
		c.Refresh(t, n)
	}
}

// Refresh makes n's kms run its command now and waits for that run.
func (c *Cluster) Refresh(t testing.TB, n *node) {
	t.Helper()
	c.Sh(t, "kms refresh --endpoint unix://"+n.socket)
}

// HUP sends SIGHUP to n's kms, which then runs its command (without
// waiting for it: see WaitKeys).
func (c *Cluster) HUP(t testing.TB, n *node) {
	t.Helper()
	c.Sh(t, fmt.Sprintf("kill -HUP %d", n.kms.pid()))
}

// Keys is what kms status says a daemon holds: key_id -> role (primary,
// listed, unlisted).
type Keys map[string]string

// Status runs kms status on n and returns the keys its daemon holds. It
// fails the test unless the daemon answers and serves.
func (c *Cluster) Status(t testing.TB, n *node) Keys {
	t.Helper()
	out := c.Sh(t, "kms status --output json --endpoint unix://"+n.socket)
	var s struct {
		Serving bool
		Primary string
		Keys    []struct {
			KeyID string `json:"key_id"`
			Role  string
		}
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("kms status --output json: %v: %q", err, out)
	}
	keys := Keys{}
	for _, k := range s.Keys {
		keys[k.KeyID] = k.Role
	}
	if !s.Serving || keys[s.Primary] != "primary" {
		t.Fatalf("%s: kms status: %s", n.name, out)
	}
	return keys
}

// WantKeys checks with kms status that every node's daemon holds exactly
// want.
func (c *Cluster) WantKeys(t testing.TB, want Keys) {
	t.Helper()
	for _, n := range c.Nodes {
		if got := c.Status(t, n); !maps.Equal(got, want) {
			t.Fatalf("%s: kms holds %v, want %v", n.name, got, want)
		}
	}
}

// WaitKeys waits until n's daemon holds exactly want (after a kill -HUP).
func (c *Cluster) WaitKeys(t testing.TB, n *node, want Keys) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := c.Status(t, n)
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: kms holds %v, want %v", n.name, got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
