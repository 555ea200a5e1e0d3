// Package health answers whether the daemon can serve: the standard
// grpc.health.v1 service on the KMS socket, and Ready, a real round trip
// through the keys.
package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
)

// Health is the standard grpc.health.v1 service on the KMS socket. It
// answers for the whole server ("") and for each KMS service by name, all
// SERVING while a KEK is loaded and NOT_SERVING while purged.
type Health struct {
	srv      *grpchealth.Server
	stopping chan struct{}
	stop     sync.Once
}

var healthNames = []string{
	"",
	v1beta1.KeyManagementService_ServiceDesc.ServiceName,
	v2.KeyManagementService_ServiceDesc.ServiceName,
}

// Register adds grpc.health.v1 to s, NOT_SERVING until SetLoaded.
func Register(s *grpc.Server) *Health {
	h := &Health{srv: grpchealth.NewServer(), stopping: make(chan struct{})}
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
	*grpchealth.Server
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

// Cipher is what Ready needs of the key cache (a keysource.Source in the
// daemon).
type Cipher interface {
	Encrypt(plaintext []byte) (ciphertext []byte, keyID string, err error)
	Decrypt(ciphertext []byte) (plaintext []byte, keyID string, err error)
}

// readyProbe is what Ready encrypts; it is not secret.
var readyProbe = []byte("kms readiness probe")

// Ready says whether the daemon can serve requests right now: a KEK is
// loaded and a round trip through the codec, with the primary key and the
// daemon's mode, gives the plaintext back. It returns the primary's key_id.
func Ready(keys Cipher) (keyID string, err error) {
	ct, keyID, err := keys.Encrypt(readyProbe)
	if err != nil {
		return "", fmt.Errorf("encrypt: %w", err)
	}
	pt, opened, err := keys.Decrypt(ct)
	if err != nil {
		return "", fmt.Errorf("decrypt: %w", err)
	}
	if !bytes.Equal(pt, readyProbe) || opened != keyID {
		return "", errors.New("encrypt/decrypt round trip gave back something else")
	}
	return keyID, nil
}
