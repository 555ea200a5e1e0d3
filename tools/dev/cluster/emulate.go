package cluster

// Stand-ins for kek-gen --add-secondary/--promote/--retire and kms status
// while they are not on main (keys.go picks the real commands as soon as
// the built binaries have them). Delete this file once they are.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsv2 "k8s.io/kms/apis/v2"
)

// keyID is the README's key_id of a key.
func keyID(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("cmdkms key id v1"))
	return "kek1-" + hex.EncodeToString(m.Sum(nil)[:16])
}

// readKeyring returns the base64 key lines of a keyring file, primary first.
func readKeyring(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	if strings.TrimSpace(lines[0]) != "kms-keyring v1" {
		t.Fatalf("%s: not a text keyring", path)
	}
	var keys []string
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			keys = append(keys, l)
		}
	}
	return keys
}

func lineID(t testing.TB, line string) string {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(line)
	if err != nil {
		t.Fatal(err)
	}
	return keyID(k)
}

// writeKeyring writes keys (base64 lines) atomically, mode 0600.
func writeKeyring(t testing.TB, path string, keys []string) {
	t.Helper()
	text := "kms-keyring v1\n"
	for _, k := range keys {
		text += "# key_id " + lineID(t, k) + "\n" + k + "\n"
	}
	writeFile(t, path+".tmp", []byte(text))
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func emulateAddSecondary(t testing.TB, path string) string {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	line := base64.StdEncoding.EncodeToString(k)
	writeKeyring(t, path, append(readKeyring(t, path), line))
	t.Logf("emulated: kek-gen --add-secondary %s  # added key_id %s", path, keyID(k))
	return keyID(k)
}

// emulateEdit is kek-gen --promote or --retire.
func emulateEdit(t testing.TB, path, op, id string) {
	t.Helper()
	keys := readKeyring(t, path)
	var out []string
	var found string
	for _, k := range keys {
		if lineID(t, k) == id {
			found = k
			continue
		}
		out = append(out, k)
	}
	switch {
	case found == "":
		t.Fatalf("%s: no key %s", path, id)
	case op == "promote":
		out = append([]string{found}, out...)
	case op == "retire" && lineID(t, keys[0]) == id:
		t.Fatalf("%s: %s is the primary; promote another key first", path, id)
	}
	writeKeyring(t, path, out)
	t.Logf("emulated: kek-gen --%s %s %s", op, id, path)
}

// emulateStatus asks the daemon over its socket (KMS v2 Status: health and
// primary key_id) and its /metrics (kms_kek_keys: how many keys it holds).
func (c *Cluster) emulateStatus(t testing.TB, n *node) KeyStatus {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+n.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := kmsv2.NewKeyManagementServiceClient(conn).Status(ctx, &kmsv2.StatusRequest{})
	if err != nil {
		t.Fatalf("%s: kms Status: %v", n.name, err)
	}
	if st.Healthz != "ok" {
		t.Fatalf("%s: kms Status healthz %q", n.name, st.Healthz)
	}
	code, body := c.Get("http://" + n.healthAddr() + "/metrics")
	m := regexp.MustCompile(`(?m)^kms_kek_keys (\d+)$`).FindStringSubmatch(body)
	if code != 200 || m == nil {
		t.Fatalf("%s: /metrics %d, no kms_kek_keys", n.name, code)
	}
	nkeys, _ := strconv.Atoi(m[1])
	s := KeyStatus{Primary: st.KeyId, NKeys: nkeys}
	t.Logf("emulated: kms status --endpoint unix://%s  # primary %s, %d key(s)", n.socket, s.Primary, s.NKeys)
	return s
}
