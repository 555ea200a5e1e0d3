package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec"
)

// Health is the standard grpc.health.v1 service on the KMS socket. It
// answers for the whole server ("") and for each KMS service by name, all
// SERVING while a KEK is loaded and NOT_SERVING while purged.
type Health struct {
	srv      *health.Server
	stopping chan struct{}
	stop     sync.Once
}

var healthNames = []string{
	"",
	v1beta1.KeyManagementService_ServiceDesc.ServiceName,
	v2.KeyManagementService_ServiceDesc.ServiceName,
}

// RegisterHealth adds grpc.health.v1 to s, NOT_SERVING until SetLoaded.
func RegisterHealth(s *grpc.Server) *Health {
	h := &Health{srv: health.NewServer(), stopping: make(chan struct{})}
	h.SetLoaded(false)
	healthpb.RegisterHealthServer(s, watchEnds{h.srv, h.stopping})
	return h
}

// SetLoaded says whether a KEK is loaded.
func (h *Health) SetLoaded(loaded bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if loaded {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, n := range healthNames {
		h.srv.SetServingStatus(n, st)
	}
}

// Shutdown reports NOT_SERVING from now on, whatever SetLoaded says, so
// that clients move away while in-flight calls finish, and ends every
// Watch stream.
func (h *Health) Shutdown() {
	h.srv.Shutdown()
	h.stop.Do(func() { close(h.stopping) })
}

// watchEnds is gRPC's health service with Watch streams that end when the
// daemon stops. gRPC's own never end by themselves, so a client watching
// health would hold GracefulStop until --shutdown-timeout cut off every
// call still in flight.
type watchEnds struct {
	*health.Server
	stopping <-chan struct{}
}

func (w watchEnds) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-w.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	return w.Server.Watch(req, watchStream{stream, ctx})
}

// watchStream is a Watch stream whose context ends with the daemon.
type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (s watchStream) Context() context.Context { return s.ctx }

// readyProbe is what Ready encrypts; it is not secret.
var readyProbe = []byte("kms readiness probe")

// Ready says whether the daemon can serve requests right now: a KEK is
// loaded and a round trip through the codec, with the primary key and
// mode, gives the plaintext back.
func Ready(keys Keys, mode codec.Mode) (keyID string, err error) {
	set := keys.Keys()
	if set == nil {
		return "", errors.New("no KEK loaded: the KEK command has kept failing and the keys were purged")
	}
	ct, err := set.Encrypt(mode, readyProbe)
	if err != nil {
		return "", fmt.Errorf("encrypt: %w", err)
	}
	pt, k, err := set.Decrypt(ct)
	if err != nil {
		return "", fmt.Errorf("decrypt: %w", err)
	}
	if !bytes.Equal(pt, readyProbe) || k.KeyID != set.Primary().KeyID {
		return "", errors.New("encrypt/decrypt round trip gave back something else")
	}
	return k.KeyID, nil
}

// HTTPHandler serves --health-address: /healthz (the process is up),
// /readyz (Ready) and /metrics.
func HTTPHandler(keys Keys, mode codec.Mode, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		id, err := Ready(keys, mode)
		if err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok: primary key_id %s\n", id)
	})
	mux.Handle("GET /metrics", metrics)
	return mux
}
