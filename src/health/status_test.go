package health

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	statuspb "github.com/cmdkms/kms/proto/status"
	"github.com/cmdkms/kms/src/keysource"
)

// fakeRuns answers RefreshAndWait with err.
type fakeRuns struct{ err error }

func (f fakeRuns) Status() keysource.Status {
	return keysource.Status{Keys: []keysource.KeyInfo{{ID: "kek1-test", Role: keysource.RolePrimary}}, Timeout: time.Hour}
}

func (f fakeRuns) RefreshAndWait(context.Context) error { return f.err }

// What `kms refresh` gets: the status after a run that succeeded,
// FailedPrecondition for a run that failed, Unavailable while the daemon
// stops (it has no run to report).
func TestRefreshCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{nil, codes.OK},
		{errors.New("exit status 1"), codes.FailedPrecondition},
		{keysource.ErrStopping, codes.Unavailable},
	} {
		l := bufconn.Listen(1 << 20)
		s := grpc.NewServer()
		RegisterStatus(s, fakeRuns{tc.err}, "test")
		go s.Serve(l)
		conn, err := grpc.NewClient("passthrough:///memory",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := statuspb.NewStatusClient(conn).Refresh(context.Background(), &statuspb.RefreshRequest{})
		if got := status.Code(err); got != tc.code || (err == nil && resp.Keys[0].KeyId != "kek1-test") {
			t.Errorf("run error %v: got %v (%v), want %v", tc.err, got, err, tc.code)
		}
		conn.Close()
		s.Stop()
	}
}
