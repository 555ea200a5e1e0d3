package cluster

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// crd is the drill's custom resource: the EncryptionConfiguration encrypts
// its objects too, and a migration must move them like the built-in ones.
const crd = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: credentials.drill.kms.test
spec:
  group: drill.kms.test
  scope: Namespaced
  names:
    plural: credentials
    singular: credential
    kind: Credential
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                value:
                  type: string
`

// Objects are ConfigMaps and Credentials the drill wrote, by
// "kind/name" (in namespace drill), with the value each holds.
type Objects map[string]string

// CreateObjects installs the CRD and creates created[r] objects of each
// encrypted resource other than Secrets (which the load writes) in
// namespace drill, ConfigMaps through the second node's API server and
// Credentials through the third's.
func (c *Cluster) CreateObjects(t testing.TB, created map[GroupResource]int) Objects {
	t.Helper()
	f := filepath.Join(c.Dir, "crd.yaml")
	writeFile(t, f, []byte(crd))
	c.Sh(t, "kubectl create -f "+f+" && kubectl wait --for condition=Established --timeout=1m crd/credentials.drill.kms.test")
	want := Objects{}
	for i, kind := range []struct {
		r       GroupResource
		name    string
		list    func(name, v string) string
		context string
	}{
		{Resources[1], "ConfigMap", func(name, v string) string {
			return fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":%q},"data":{"v":%q}}`, name, v)
		}, c.Nodes[1].name},
		{Resources[2], "Credential", func(name, v string) string {
			return fmt.Sprintf(`{"apiVersion":"drill.kms.test/v1","kind":"Credential","metadata":{"name":%q},"spec":{"value":%q}}`, name, v)
		}, c.Nodes[2].name},
	} {
		var items []string
		for j := range created[kind.r] {
			name, v := fmt.Sprintf("drill-%04d", j), randomHex(16)
			items = append(items, kind.list(name, v))
			want[kind.name+"/"+name] = v
		}
		f := filepath.Join(c.Dir, fmt.Sprintf("objects-%d.json", i))
		writeFile(t, f, []byte(`{"apiVersion":"v1","kind":"List","items":[`+strings.Join(items, ",")+`]}`))
		c.Sh(t, fmt.Sprintf("kubectl --context %s -n drill create -f %s >/dev/null", kind.context, f))
	}
	return want
}

// ReadObjects reads the ConfigMaps and Credentials of namespace drill
// through every API server and compares them with want.
func (c *Cluster) ReadObjects(t testing.TB, want Objects) {
	t.Helper()
	for _, n := range c.Nodes {
		out := c.Sh(t, fmt.Sprintf("kubectl --context %s -n drill get configmaps,credentials -o json", n.name))
		var list struct {
			Items []struct {
				Kind     string
				Metadata struct{ Name string }
				Data     struct{ V string }
				Spec     struct{ Value string }
			}
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("%s: kubectl get -o json: %v", n.name, err)
		}
		got := Objects{}
		for _, o := range list.Items {
			got[o.Kind+"/"+o.Metadata.Name] = o.Data.V + o.Spec.Value
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("%s: %s reads %q, want %q", n.name, k, got[k], v)
			}
		}
	}
}
