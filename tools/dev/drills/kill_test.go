package drills

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/cmdkms/kms/src/testbin"
)

// kill -9 of the daemon while callers write and read: after a restart on
// the same (now stale) socket, everything it acknowledged still decrypts.
func TestKill9UnderLoad(t *testing.T) {
	t.Parallel()
	dir, sock := shortSock(t)
	ring := filepath.Join(dir, "keyring")
	writeKeyring(t, ring, testbin.NewKey())
	args := []string{"--command", "cat " + ring}
	kills, perLife := scale(2, 10), scale(500, 20000)

	var objs store
	for life := range kills {
		d := startKMS(t, sock, args...)
		stop := mix(d.Client, &objs, func(seq int) int { return seq })
		testbin.WaitFor(t, "acknowledged writes", time.Minute, func() bool { return objs.len() >= perLife*(life+1) })
		d.Stop(t, syscall.SIGKILL)
		time.Sleep(50 * time.Millisecond) // callers keep calling the dead socket
		r := stop()
		for code, n := range r.Failures {
			// A call cut off by the kill, or refused after it, is
			// Unavailable; one that outlived the run, Canceled.
			if code != codes.Unavailable.String() && code != codes.Canceled.String() {
				t.Fatalf("life %d: %d calls failed with %s; want only Unavailable after the kill", life, n, code)
			}
		}
		if r.Failed() == 0 {
			t.Fatalf("life %d: no call failed: the kill did not happen under load", life)
		}
		d.Client.Close()
	}

	d := startKMS(t, sock, args...)
	objects := objs.all()
	readAll(t, d.Client, objects)
	t.Logf("%d kills, %d acknowledged objects, all decrypt after restart", kills, len(objects))
}
