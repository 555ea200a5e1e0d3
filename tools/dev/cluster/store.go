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

// Stored reads every Secret's value as etcd holds it, with etcdctl, and
// returns where each is stored, by etcd key: "v2:<provider>:<key_id>" or
// "v1:<provider>:<key_id>" (for v1 the key_id is the one in the header of
// kms's ciphertext of the DEK). A value that is not KMS-encrypted fails the
// test.
func (c *Cluster) Stored(t testing.TB) map[string]string {
	t.Helper()
	out := c.Sh(t, "etcdctl get /registry/secrets/ --prefix -w json")
	var resp struct {
		Kvs []struct{ Key, Value []byte }
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("etcdctl -w json: %v", err)
	}
	where := map[string]string{}
	for _, kv := range resp.Kvs {
		w, err := whereStored(kv.Value)
		if err != nil {
			t.Fatalf("etcd %s: %v", kv.Key, err)
		}
		where[string(kv.Key)] = w
	}
	return where
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
		// uint16 length of the encrypted DEK, then kms's ciphertext:
		// ":ck:v2:aesgcm:" (or aescbc), the key's 16-byte id, ...
		if len(rest) < 2 {
			return "", fmt.Errorf("v1: truncated")
		}
		dek := rest[2:min(len(rest), 2+int(binary.BigEndian.Uint16(rest)))]
		if len(dek) < 30 || !bytes.HasPrefix(dek, []byte(":ck:v2:")) {
			return "", fmt.Errorf("v1: DEK not in kms's format: %.14q", dek)
		}
		return "v1:" + string(name) + ":kek1-" + hex.EncodeToString(dek[14:30]), nil
	}
	return "", fmt.Errorf("unknown KMS API %q", api)
}

// count tallies values by where they are stored.
func count(where map[string]string) map[string]int {
	n := map[string]int{}
	for _, w := range where {
		n[w]++
	}
	return n
}

// WantStored checks that every Secret in etcd, and at least min of them,
// is stored under provider p and key_id id, and that the runbook's census
// (etcdctl and grep) says the same.
func (c *Cluster) WantStored(t testing.TB, p Provider, id string, min int) map[string]string {
	t.Helper()
	where := c.Stored(t)
	want := p.API + ":" + p.Name + ":" + id
	if n := count(where); n[want] != len(where) || len(where) < min {
		t.Fatalf("secrets in etcd by where stored: %v; want all (at least %d) at %s", n, min, want)
	}
	// What an operator can run: the key_ids of KMS v2 values (v1 values
	// carry their key id in binary), or the provider prefixes.
	grep := `grep -a -o 'kek1-[0-9a-f]\{32\}'`
	census := id
	if p.API == "v1" {
		grep = `grep -a -o '^k8s:enc:kms:v1:[a-z0-9-]*:'`
		census = p.prefix()
	}
	out := c.Sh(t, "etcdctl get /registry/secrets/ --prefix --print-value-only | "+grep+" | sort | uniq -c")
	got := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 {
			got[f[1]], _ = strconv.Atoi(f[0])
		}
	}
	// A value written between the two reads is counted by the second only.
	if len(got) != 1 || got[census] < len(where) {
		t.Fatalf("census by etcdctl and grep: %v; want only %s, at least %d", got, census, len(where))
	}
	return where
}
