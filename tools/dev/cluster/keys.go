package cluster

import (
	"encoding/json"
	"fmt"
	"maps"
	"testing"
	"time"
)

// Keyrings to every node, each daemon made to read its own (the page's
// kms refresh, or kill -HUP), and what each then holds (kms status).

// distribute copies the first node's keyring to the others and has every
// daemon read it, as steps 1 and 2 of docs/rotation.md say.
func (c *Cluster) distribute(t testing.TB) {
	t.Helper()
	for _, n := range c.Nodes {
		if n != c.Nodes[0] {
			c.copyKeyring(t, n)
		}
		c.MustRun(t, n, rotRefresh)
	}
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
	out := c.NodeSh(t, n, "kms status --output json")
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
