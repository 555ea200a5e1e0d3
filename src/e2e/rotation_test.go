package e2e

// The documented rotation and migration procedures (docs/rotation.md),
// followed with kube-apiserver's own transformers. What decides whether
// `kubectl get secrets -A -o json | kubectl replace -f -` rewrites an
// object is the stale result of TransformFromStorage: kube-apiserver skips
// the write of an unchanged object unless it read it as stale.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage/value"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	kmsv1 "k8s.io/kms/apis/v1beta1"

	"github.com/cmdkms/kms/src/codec/codectest"
	"github.com/cmdkms/kms/src/testbin"
)

// config writes an EncryptionConfiguration for secrets with the given
// providers ("v1:name" or "v2:name", all on endpoint), the first writing.
func config(t *testing.T, dir, file, endpoint string, providers ...string) string {
	t.Helper()
	text := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n"
	for _, p := range providers {
		api, name, _ := strings.Cut(p, ":")
		text += fmt.Sprintf("  - kms:\n      apiVersion: %s\n      name: %s\n      endpoint: %s\n      timeout: 10s\n", api, name, endpoint)
	}
	path := filepath.Join(dir, file)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// where says under which provider and which KEK an object is stored:
// "v1:name:kek1-…", "v2:name:kek1-…", or "v1:name:2018" for a DEK in the
// 2018 format, which names no key.
func where(t *testing.T, stored []byte) string {
	t.Helper()
	rest, ok := bytes.CutPrefix(stored, []byte("k8s:enc:kms:"))
	if !ok {
		t.Fatalf("not KMS-encrypted: %.30q", stored)
	}
	api, rest := string(rest[:2]), rest[3:]
	i := bytes.IndexByte(rest, ':')
	name, rest := string(rest[:i]), rest[i+1:]
	if api == "v2" {
		var eo kmstypes.EncryptedObject
		if err := proto.Unmarshal(rest, &eo); err != nil {
			t.Fatal(err)
		}
		return "v2:" + name + ":" + eo.KeyID
	}
	dek := rest[2 : 2+binary.BigEndian.Uint16(rest)]
	switch {
	case bytes.HasPrefix(dek, []byte(codectest.LegacyPrefix)):
		return "v1:" + name + ":2018"
	case bytes.HasPrefix(dek, []byte(":ck:v2:")):
		return "v1:" + name + ":kek1-" + hex.EncodeToString(dek[14:30])
	}
	t.Fatalf("v1 DEK in an unknown format: %.14q", dek)
	return ""
}

// census counts objects by where.
func census(t *testing.T, objs []object) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, o := range objs {
		n[where(t, o.stored)]++
	}
	return n
}

// replace is `kubectl get -o json | kubectl replace`: each object is read
// and, if the read was stale, written again; it returns how many were.
func (a *apiserver) replace(t *testing.T, objs []object) int {
	t.Helper()
	ctx := context.Background()
	rewritten := 0
	for i := range objs {
		o := &objs[i]
		got, stale, err := a.tr.TransformFromStorage(ctx, o.stored, value.DefaultContext(o.key))
		if err != nil || !bytes.Equal(got, o.plain) {
			t.Fatalf("read %s: %v", o.key, err)
		}
		if !stale {
			continue
		}
		if o.stored, err = a.tr.TransformToStorage(ctx, o.plain, value.DefaultContext(o.key)); err != nil {
			t.Fatalf("write %s: %v", o.key, err)
		}
		rewritten++
	}
	return rewritten
}

func want(t *testing.T, what string, got map[string]int, place string, n int) {
	t.Helper()
	if got[place] != n || len(got) != 1 {
		t.Fatalf("%s: objects stored %v, want all %d at %s", what, got, n, place)
	}
}

// node is one daemon on its socket, reading a keyring the test rewrites.
type node struct {
	dir, ring, sock, endpoint string
	d                         *testbin.Proc
}

// newNode is a place for a daemon; restart starts it.
func newNode(t *testing.T) *node {
	dir := testbin.ShortDir(t)
	n := &node{dir: dir, ring: filepath.Join(dir, "keyring"), sock: filepath.Join(dir, "kms.sock")}
	n.endpoint = "unix://" + n.sock
	return n
}

// rekey makes keys the keyring, refreshes the daemon (SIGHUP) and waits
// until keys[0] is its primary.
func (n *node) rekey(t *testing.T, keys ...[]byte) {
	t.Helper()
	testbin.WriteKeyring(t, n.ring, keys...)
	n.d.Signal(syscall.SIGHUP)
	testbin.WaitFor(t, "the new primary", 30*time.Second, func() bool { return v2Status(t, n.endpoint).KeyID == keyID(keys[0]) })
}

// restart stops the daemon, if it runs, and starts it with keys: it then
// holds exactly those, none the command stopped listing.
func (n *node) restart(t *testing.T, keys ...[]byte) {
	t.Helper()
	if n.d != nil {
		if code := n.d.Stop(t, syscall.SIGTERM); code != 0 {
			t.Fatalf("kms exit %d", code)
		}
	}
	testbin.WriteKeyring(t, n.ring, keys...)
	n.d = testbin.StartKMS(t, n.sock, "--command", "cat "+n.ring)
}

// KMS v1: a v1 envelope cannot tell kube-apiserver which KEK wrapped its
// DEK, so a new primary key alone makes nothing stale and the replace
// rewrites nothing; dropping the old key then loses every secret. What
// works is a second provider of a new name placed first.
func TestRotationV1(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.KMSv1, true)
	old, neu := testbin.NewKey(), testbin.NewKey()
	n := newNode(t)
	n.restart(t, old)
	before := config(t, n.dir, "before.yaml", n.endpoint, "v1:kms")
	objs := load(t, before).write(t, "v1", 200)
	want(t, "written", census(t, objs), "v1:kms:"+keyID(old), 200)

	// Steps 1 and 2 on every node: the new key, primary.
	n.rekey(t, neu, old)
	// The old documented procedure: replace under the same configuration.
	if n := load(t, before).replace(t, objs); n != 0 {
		t.Fatalf("a replace under the same v1 provider rewrote %d objects: the test's premise is wrong", n)
	}
	want(t, "after a replace with the old configuration", census(t, objs), "v1:kms:"+keyID(old), 200)

	// Step 2: a provider of a new name first, the old one second; restart
	// the API servers. Now every object reads as stale and moves.
	during := config(t, n.dir, "during.yaml", n.endpoint, "v1:kms-2", "v1:kms")
	if k := load(t, during).replace(t, objs); k != 200 {
		t.Fatalf("replace with a new provider first rewrote %d of 200", k)
	}
	want(t, "after the replace", census(t, objs), "v1:kms-2:"+keyID(neu), 200)
	if k := load(t, during).replace(t, objs); k != 0 {
		t.Fatalf("a second replace rewrote %d", k)
	}

	// Step 4: retire the old key and the old provider; restart everything.
	n.restart(t, neu)
	load(t, config(t, n.dir, "after.yaml", n.endpoint, "v1:kms-2")).readAll(t, "after retiring the old key", objs)
}

// KMS v2 needs no change of configuration: each object names its key_id,
// kube-apiserver reads objects under another key_id as stale once it has
// seen the new one in Status, and the replace moves them all.
func TestRotationV2(t *testing.T) {
	old, neu := testbin.NewKey(), testbin.NewKey()
	n := newNode(t)
	n.restart(t, old)
	cfg := config(t, n.dir, "v2.yaml", n.endpoint, "v2:kms")
	objs := load(t, cfg).write(t, "v2", 200)
	want(t, "written", census(t, objs), "v2:kms:"+keyID(old), 200)

	n.rekey(t, neu, old)
	if k := load(t, cfg).replace(t, objs); k != 200 {
		t.Fatalf("replace after the key_id changed rewrote %d of 200", k)
	}
	want(t, "after the replace", census(t, objs), "v2:kms:"+keyID(neu), 200)

	n.restart(t, neu)
	load(t, cfg).readAll(t, "after retiring the old key", objs)
}

// legacyPlugin is the 2018 daemon as far as kube-apiserver could tell: KMS
// v1beta1, DEKs encrypted in the 2018 format under a raw key.
type legacyPlugin struct {
	kmsv1.UnimplementedKeyManagementServiceServer
	key []byte
}

func (p legacyPlugin) Version(context.Context, *kmsv1.VersionRequest) (*kmsv1.VersionResponse, error) {
	return &kmsv1.VersionResponse{Version: "v1beta1", RuntimeName: "kms-2018", RuntimeVersion: "1"}, nil
}

func (p legacyPlugin) Encrypt(_ context.Context, r *kmsv1.EncryptRequest) (*kmsv1.EncryptResponse, error) {
	return &kmsv1.EncryptResponse{Cipher: codectest.LegacyEncrypt(p.key, testbin.NewKey()[:16], r.Plain)}, nil
}

// Secrets written through the 2018 daemon move to a new key, under KMS v1
// (a new provider name) and to KMS v2 (a v2 provider first), after which
// the raw 2018 key can go.
func TestMigrationFrom2018(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.KMSv1, true)
	for _, target := range []string{"v1:kms-2", "v2:kms-2"} {
		t.Run(strings.Replace(target, ":", "-", 1), func(t *testing.T) {
			n := newNode(t)
			raw, neu := testbin.NewKey(), testbin.NewKey()

			// The 2018 cluster: its daemon on the socket, provider "kms".
			l, err := net.Listen("unix", n.sock)
			if err != nil {
				t.Fatal(err)
			}
			gs := grpc.NewServer()
			kmsv1.RegisterKeyManagementServiceServer(gs, legacyPlugin{key: raw})
			go gs.Serve(l)
			legacy := config(t, n.dir, "2018.yaml", n.endpoint, "v1:kms")
			objs := load(t, legacy).write(t, "2018", 100)
			gs.Stop()
			want(t, "written in 2018", census(t, objs), "v1:kms:2018", 100)

			// This daemon in its place, the raw key kept for decryption and
			// a new primary; a provider of a new name first.
			n.restart(t, neu, raw)
			if k := load(t, legacy).replace(t, objs); k != 0 {
				t.Fatalf("a replace under the 2018 configuration rewrote %d objects", k)
			}
			during := config(t, n.dir, "during.yaml", n.endpoint, target, "v1:kms")
			if k := load(t, during).replace(t, objs); k != 100 {
				t.Fatalf("replace with %s first rewrote %d of 100", target, k)
			}
			want(t, "migrated", census(t, objs), target+":"+keyID(neu), 100)

			n.restart(t, neu)
			load(t, config(t, n.dir, "after.yaml", n.endpoint, target)).readAll(t, "after retiring the 2018 key", objs)
		})
	}
}
