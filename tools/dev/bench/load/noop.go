package load

import (
	"context"
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/process"
	"github.com/cmdkms/kms/src/socket"
	"github.com/cmdkms/kms/src/transport"
)

// NoopKeyID is the key_id the do-nothing plugin reports.
const NoopKeyID = "noop"

// ServeNoop serves a plugin that does no work: encrypt and decrypt return
// their input. Its socket comes from the daemon's own socket.Listen, its
// gRPC server from transport.NewServer, and it tunes the garbage collector
// as the daemon does, so what it costs per request is the transport's
// floor. Interceptors the daemon adds (metrics) are work the daemon does
// per request, so they are not copied here. It runs until SIGTERM or
// SIGINT.
func ServeNoop(endpoint string, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	process.TuneGC()
	l, err := socket.Listen(endpoint, 0o600, log)
	if err != nil {
		return err
	}
	l = transport.Limit(l)
	gs := transport.NewServer(transport.IdleTimeout)
	RegisterNoop(gs)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	log.Info("serving the do-nothing plugin", "socket", l.Addr().String())
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	gs.GracefulStop()
	return nil
}

// RegisterNoop adds the do-nothing KMS v1beta1 and v2 services to s.
func RegisterNoop(s *grpc.Server) {
	v1beta1.RegisterKeyManagementServiceServer(s, noopV1{})
	v2.RegisterKeyManagementServiceServer(s, noopV2{})
}

type noopV1 struct {
	v1beta1.UnimplementedKeyManagementServiceServer
}

func (noopV1) Version(context.Context, *v1beta1.VersionRequest) (*v1beta1.VersionResponse, error) {
	return &v1beta1.VersionResponse{Version: V1APIVersion, RuntimeName: "noop", RuntimeVersion: "0"}, nil
}

func (noopV1) Encrypt(_ context.Context, r *v1beta1.EncryptRequest) (*v1beta1.EncryptResponse, error) {
	return &v1beta1.EncryptResponse{Cipher: r.Plain}, nil
}

func (noopV1) Decrypt(_ context.Context, r *v1beta1.DecryptRequest) (*v1beta1.DecryptResponse, error) {
	return &v1beta1.DecryptResponse{Plain: r.Cipher}, nil
}

type noopV2 struct {
	v2.UnimplementedKeyManagementServiceServer
}

func (noopV2) Status(context.Context, *v2.StatusRequest) (*v2.StatusResponse, error) {
	return &v2.StatusResponse{Version: "v2", Healthz: "ok", KeyId: NoopKeyID}, nil
}

func (noopV2) Encrypt(_ context.Context, r *v2.EncryptRequest) (*v2.EncryptResponse, error) {
	return &v2.EncryptResponse{Ciphertext: r.Plaintext, KeyId: NoopKeyID}, nil
}

func (noopV2) Decrypt(_ context.Context, r *v2.DecryptRequest) (*v2.DecryptResponse, error) {
	return &v2.DecryptResponse{Plaintext: r.Ciphertext}, nil
}
