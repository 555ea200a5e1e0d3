package health

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	statuspb "github.com/cmdkms/kms/proto/status"
	"github.com/cmdkms/kms/src/keysource"
)

// Runs is what the status service needs of the key cache (a
// keysource.Source in the daemon).
type Runs interface {
	Status() keysource.Status
	// RefreshAndWait runs the command and returns that run's error;
	// keysource.ErrStopping while the daemon stops.
	RefreshAndWait(ctx context.Context) error
}

// RegisterStatus adds the daemon's status service (proto/status) to s:
// the keys it holds and how its KEK command fares, for `kms status`, and a
// refresh that waits for its run, for `kms refresh`.
func RegisterStatus(s *grpc.Server, keys Runs, version string) {
	statuspb.RegisterStatusServer(s, statusServer{keys: keys, version: version})
}

type statusServer struct {
	statuspb.UnimplementedStatusServer
	keys    Runs
	version string
}

func (s statusServer) Get(context.Context, *statuspb.GetRequest) (*statuspb.GetResponse, error) {
	return s.get(), nil
}

func (s statusServer) Refresh(ctx context.Context, _ *statuspb.RefreshRequest) (*statuspb.GetResponse, error) {
	switch err := s.keys.RefreshAndWait(ctx); {
	case ctx.Err() != nil:
		return nil, status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, keysource.ErrStopping):
		return nil, status.Error(codes.Unavailable, err.Error())
	case err != nil:
		return nil, status.Errorf(codes.FailedPrecondition, "the KEK command failed: %v", err)
	}
	return s.get(), nil
}

func (s statusServer) get() *statuspb.GetResponse {
	st := s.keys.Status()
	r := &statuspb.GetResponse{
		LastSuccessUnix:        st.LastSuccess.Unix(),
		FailedRuns:             int64(st.Failures),
		TimeoutSeconds:         int64(st.Timeout.Seconds()),
		RefreshIntervalSeconds: int64(st.RefreshInterval.Seconds()),
		Version:                s.version,
	}
	if st.LastError != nil {
		r.LastError = st.LastError.Error()
	}
	for _, k := range st.Keys {
		r.Keys = append(r.Keys, &statuspb.Key{KeyId: k.ID, Role: string(k.Role)})
	}
	return r
}
