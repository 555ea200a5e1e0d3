package cluster

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
)

// Stored reads every value of every encrypted resource as etcd holds it,
// with etcdctl from the host, and returns where each is stored, by etcd key:
// "v2:<provider>:<key_id>" or "v1:<provider>:<key_id>" (for v1 the key_id
// is the one in the header of kms's ciphertext of the DEK, or "2018" for
// the 2018 format, which names none). A value that is
// not KMS-encrypted fails the test.
func (c *Cluster) Stored(t testing.TB) map[string]string {
	t.Helper()
	where := map[string]string{}
	for _, r := range Resources {
		out := c.Sh(t, "etcdctl get "+r.etcdPrefix()+" --prefix -w json")
		var resp struct {
			Kvs []struct{ Key, Value []byte }
		}
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("etcdctl -w json: %v", err)
		}
		for _, kv := range resp.Kvs {
			w, err := whereStored(kv.Value)
			if err != nil {
				t.Fatalf("etcd %s: %v", kv.Key, err)
			}
			where[string(kv.Key)] = w
		}
	}
	return where
}

// StoredKey is where the value at etcd key is stored (see Stored).
func (c *Cluster) StoredKey(t testing.TB, key string) string {
	t.Helper()
	raw := c.Sh(t, "etcdctl get "+key+" --print-value-only")
	w, err := whereStored([]byte(strings.TrimSuffix(raw, "\n")))
	if err != nil {
		t.Fatalf("etcd %s: %v", key, err)
	}
	return w
}

func whereStored(v []byte) (string, error) {
	rest, ok := bytes.CutPrefix(v, []byte("k8s:enc:kms:"))
	if !ok || len(rest) < 4 {
		return "", fmt.Errorf("not KMS-encrypted: %.30q", v)
	}
	api, rest := string(rest[:2]), rest[3:]
	name, rest, ok := bytes.Cut(rest, []byte(":"))
	if !ok {
		return "", fmt.Errorf("no provider name: %.40q", v)
	}
	switch api {
	case "v2":
		var eo kmstypes.EncryptedObject
		if err := proto.Unmarshal(rest, &eo); err != nil {
			return "", fmt.Errorf("KMS v2 EncryptedObject: %w", err)
		}
		return "v2:" + string(name) + ":" + eo.KeyID, nil
	case "v1":
		// The length of the encrypted DEK (2 bytes), then kms's ciphertext
		// of it: ":ck:v2:aesgcm:" (or aescbc), the key's 16-byte id, ...;
		// or the 2018 format, which names no key.
		if len(rest) < 2 {
			return "", fmt.Errorf("v1: truncated")
		}
		dek := rest[2:min(len(rest), 2+int(binary.BigEndian.Uint16(rest)))]
		if bytes.HasPrefix(dek, []byte(":ck:aescbc:v1:")) {
			return "v1:" + string(name) + ":2018", nil
		}
		if len(dek) < 30 || !bytes.HasPrefix(dek, []byte(":ck:v2:")) {
			return "", fmt.Errorf("v1: DEK not in kms's format: %.14q", dek)
		}
		return "v1:" + string(name) + ":kek1-" + hex.EncodeToString(dek[14:30]), nil
	}
	return "", fmt.Errorf("unknown KMS API %q", api)
}

// WantStored checks that every value of every encrypted resource in etcd
// is stored under provider p and key_id id, and that there are at least
// min[r] values of each resource r; and that what an operator sees of the
// Secrets with etcdctl (docs/verify.md) says the same.
func (c *Cluster) WantStored(t testing.TB, p Provider, id string, min map[GroupResource]int) {
	t.Helper()
	where := c.Stored(t)
	want := p.API + ":" + p.Name + ":" + id
	n, per := map[string]int{}, map[GroupResource]int{}
	for key, w := range where {
		n[w]++
		for _, r := range Resources {
			if strings.HasPrefix(key, r.etcdPrefix()) {
				per[r]++
			}
		}
	}
	for r, least := range min {
		if per[r] < least {
			t.Fatalf("%d %s in etcd, want at least %d", per[r], r, least)
		}
	}
	if n[want] != len(where) {
		t.Fatalf("values in etcd by where stored: %v; want all %d at %s", n, len(where), want)
	}
	secrets := per[GroupResource{"", "secrets"}]

	// What an operator sees with docs/verify.md's blocks: the start of one
	// value, its key_id, and a count of the key_ids of KMS v2 values (v1
	// values carry their key id in binary: their provider prefixes
	// instead), and kek-census.
	n1 := c.Nodes[0]
	c.MustRun(t, n1, verEnv)
	if got := odText(c.MustRun(t, n1, verOd)); !strings.HasPrefix(got, p.prefix()) {
		t.Fatalf("od -c of a stored value shows %q, want %s…", got, p.prefix())
	}
	count, census := verKeyIDs, id
	if p.API == "v2" {
		if got := strings.TrimSpace(c.MustRun(t, n1, verKeyID)); got != id {
			t.Fatalf("etcdctl and grep show key_id %q for a value, want %s", got, id)
		}
	} else {
		count, census = verV1Names, p.prefix()
	}
	got := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(c.MustRun(t, n1, count)), "\n") {
		if f := strings.Fields(l); len(f) == 2 {
			got[f[1]], _ = strconv.Atoi(f[0])
		}
	}
	// A value written between the two reads is counted by the second only.
	if len(got) != 1 || got[census] < secrets {
		t.Fatalf("census of the Secrets by etcdctl and grep: %v; want only %s, at least %d", got, census, secrets)
	}
	if out := c.MustRun(t, n1, verCensus); !strings.Contains(out, p.Name) {
		t.Fatalf("kek-census does not name provider %s:\n%s", p.Name, out)
	}
}

// odText is the characters od -c shows, without offsets and padding.
func odText(od string) string {
	var b strings.Builder
	for _, l := range strings.Split(od, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			b.WriteString(strings.Join(f[1:], ""))
		}
	}
	return b.String()
}
