package drills

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
)

// The KEK is rotated 10 times through the keyring (new primary first, the
// old keys still listed) while callers write and read objects from all
// generations: not one call fails, each generation gets writes, and after
// a restart everything still decrypts.
func TestRotationUnderLoad(t *testing.T) {
	t.Parallel()
	dir, sock := shortSock(t)
	ring := filepath.Join(dir, "keyring")
	keys := [][]byte{testbin.NewKey()}
	ids := []string{writeKeyring(t, ring, keys...)}
	args := []string{"--command", "cat " + ring}
	d := startKMS(t, sock, args...)
	const rotations = 10
	perKey := scale(200, 20000)

	var objs store
	ctx := context.Background()
	// Reads spread over every generation written so far.
	stop := mix(d.Client, &objs, func(seq int) int { return seq * 7919 })
	for i := 1; i <= rotations; i++ {
		testbin.WaitFor(t, "writes under the current key", time.Minute, func() bool { return objs.len() >= perKey*i })
		keys = append([][]byte{testbin.NewKey()}, keys...)
		ids = append(ids, writeKeyring(t, ring, keys...))
		d.Signal(syscall.SIGHUP)
		testbin.WaitFor(t, "rotation after SIGHUP", time.Minute, func() bool {
			st, err := d.V2.Status(ctx, &v2.StatusRequest{})
			return err == nil && st.KeyId == ids[i]
		})
	}
	testbin.WaitFor(t, "writes under the last key", time.Minute, func() bool { return objs.len() >= perKey*(rotations+1) })
	r := stop()
	// Calls still in flight when the run was cancelled fail with Canceled:
	// they are the run ending, not the daemon failing.
	delete(r.Failures, codes.Canceled.String())
	if r.Failed() > 0 {
		t.Fatalf("%d of %d calls failed during rotation: %v", r.Failed(), r.Requests, r.Failures)
	}
	written := map[string]int{}
	for _, o := range objs.all() {
		if o.V2 != nil {
			written[o.V2.KeyId]++
		}
	}
	for i, id := range ids {
		if written[id] == 0 {
			t.Errorf("no v2 write reported key %d (%s)", i, id)
		}
	}

	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}
	d2 := startKMS(t, sock, args...)
	objects := objs.all()
	readAll(t, d2.Client, objects)
	t.Logf("%d rotations, %d calls under load, %d objects all decrypt after restart; v2 writes per key: %v", rotations, r.Requests, len(objects), written)
}
