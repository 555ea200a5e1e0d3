package main

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/proto"
	kmsv2 "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/cmdkms/kms/src/codec"
)

// Envelope kinds, as printed and in --json.
const (
	kmsV2    = "kms-v2"
	kmsV1    = "kms-v1"
	identity = "identity"
	unknown  = "unknown"
)

// builtin are the EncryptionConfiguration providers whose values start
// "k8s:enc:<type>:v1:<key name>:".
var builtin = []string{"aescbc", "aesgcm", "secretbox"}

// Row is one line of the census: how many values of a resource use one
// envelope.
type Row struct {
	Resource string `json:"resource"`
	Envelope string `json:"envelope"`
	// Name is the KMS provider's name, or the built-in provider's key name.
	Name  string `json:"name"`
	KeyID string `json:"key_id"`
	// Values is filled in by result.
	Values int64 `json:"values"`
}

// Finding is what one --require-none found.
type Finding struct {
	X         string   `json:"x"`
	Values    int64    `json:"values"`
	FirstKeys []string `json:"first_keys"`
}

// Result is the --json output.
type Result struct {
	Endpoints   []string  `json:"endpoints"`
	Prefix      string    `json:"prefix"`
	Revision    int64     `json:"revision"`
	Values      int64     `json:"values"`
	Rows        []Row     `json:"rows"`
	RequireNone []Finding `json:"require_none"`
}

// count accumulates the census. Its size is bounded by the number of
// distinct rows (resources times envelopes in use), not by the store.
type count struct {
	prefix   string
	rows     map[Row]int64
	findings []Finding
	maxKeys  int
}

func newCount(prefix string, requireNone []string, maxKeys int) *count {
	c := &count{prefix: prefix, rows: map[Row]int64{}, maxKeys: maxKeys}
	for _, x := range requireNone {
		c.findings = append(c.findings, Finding{X: x, FirstKeys: []string{}})
	}
	return c
}

func (c *count) add(key, value []byte) {
	r := classify(value)
	r.Resource = resource(key, c.prefix)
	c.rows[r]++
	for i := range c.findings {
		f := &c.findings[i]
		if r.uses(f.X) {
			f.Values++
			if len(f.FirstKeys) < c.maxKeys {
				f.FirstKeys = append(f.FirstKeys, string(key))
			}
		}
	}
}

// uses says whether a value in r depends on x: a key_id, a provider or key
// name, or identity.
func (r Row) uses(x string) bool {
	if x == identity {
		return r.Envelope == identity
	}
	return r.Envelope != identity && r.Envelope != unknown && (r.KeyID == x || r.Name == x)
}

// classify reads the envelope of a stored value. Only its header is read,
// and for KMS v2 the EncryptedObject protobuf that follows; nothing is
// decrypted.
func classify(v []byte) Row {
	rest, ok := bytes.CutPrefix(v, []byte("k8s:enc:"))
	if !ok {
		// kube-apiserver stores JSON, protobuf ("k8s\x00") or, for custom
		// resources with the CBOR feature on, self-described CBOR.
		if len(v) > 0 && v[0] == '{' || bytes.HasPrefix(v, []byte("k8s\x00")) || bytes.HasPrefix(v, []byte("\xd9\xd9\xf7")) {
			return Row{Envelope: identity}
		}
		return Row{Envelope: unknown}
	}
	if rest, ok := bytes.CutPrefix(rest, []byte("kms:v2:")); ok {
		name, body, ok := bytes.Cut(rest, []byte(":"))
		var eo kmsv2.EncryptedObject
		if !ok || proto.Unmarshal(body, &eo) != nil || eo.KeyID == "" {
			return Row{Envelope: unknown}
		}
		return Row{Envelope: kmsV2, Name: string(name), KeyID: eo.KeyID}
	}
	if rest, ok := bytes.CutPrefix(rest, []byte("kms:v1:")); ok {
		name, body, ok := bytes.Cut(rest, []byte(":"))
		if !ok {
			return Row{Envelope: unknown}
		}
		r := Row{Envelope: kmsV1, Name: string(name)}
		// The DEK's ciphertext, after its 2-byte length, is the plugin's;
		// when kms made it, its header names the KEK.
		if len(body) >= 2 {
			dek := body[2:min(len(body), 2+int(binary.BigEndian.Uint16(body)))]
			if id, ok := codec.KeyID(dek); ok {
				r.KeyID = id.String()
			}
		}
		return r
	}
	for _, b := range builtin {
		if rest, ok := bytes.CutPrefix(rest, []byte(b+":v1:")); ok {
			if name, _, ok := bytes.Cut(rest, []byte(":")); ok {
				return Row{Envelope: b, Name: string(name)}
			}
		}
	}
	return Row{Envelope: unknown}
}

// resource names the resource of an etcd key under prefix:
// /registry/secrets/ns/name is "secrets", /registry/<group.with.dots>/<resource>/...
// is "group/resource". Built-in resources of named groups are stored
// without their group (/registry/deployments/...), so they show as the key
// does.
func resource(key []byte, prefix string) string {
	segs := strings.SplitN(strings.TrimPrefix(string(key), prefix), "/", 3)
	if strings.Contains(segs[0], ".") && len(segs) > 1 {
		return segs[0] + "/" + segs[1]
	}
	return segs[0]
}

func (c *count) result(o *options, rev int64) *Result {
	r := &Result{Endpoints: o.endpoints, Prefix: o.prefix, Revision: rev, Rows: []Row{}, RequireNone: c.findings}
	for row, n := range c.rows {
		row.Values = n
		r.Rows = append(r.Rows, row)
		r.Values += n
	}
	slices.SortFunc(r.Rows, func(a, b Row) int {
		return cmp.Or(cmp.Compare(a.Resource, b.Resource), cmp.Compare(a.Envelope, b.Envelope),
			cmp.Compare(a.Name, b.Name), cmp.Compare(a.KeyID, b.KeyID))
	})
	return r
}

func (r *Result) writeJSON(w io.Writer) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(r)
}

func (r *Result) writeTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "etcd %s, keys under %s at revision %d: %d values\n", strings.Join(r.Endpoints, ","), r.Prefix, r.Revision, r.Values)
	if len(r.Rows) > 0 {
		fmt.Fprintln(tw, "RESOURCE\tENVELOPE\tNAME\tKEY_ID\tVALUES")
	}
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", row.Resource, row.Envelope, dash(row.Name), dash(row.KeyID), row.Values)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, f := range r.RequireNone {
		if f.Values == 0 {
			fmt.Fprintf(w, "ok: no value uses %s\n", f.X)
			continue
		}
		fmt.Fprintf(w, "FAIL: %d values still use %s; the first %d:\n", f.Values, f.X, len(f.FirstKeys))
		for _, k := range f.FirstKeys {
			fmt.Fprintf(w, "  %s\n", k)
		}
	}
	return nil
}

func dash(s string) string { return cmp.Or(s, "-") }
