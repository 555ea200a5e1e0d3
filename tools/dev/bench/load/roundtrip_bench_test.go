package load

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/audit"
	"github.com/cmdkms/kms/src/keysource"
	"github.com/cmdkms/kms/src/metrics"
	"github.com/cmdkms/kms/src/peercred"
	"github.com/cmdkms/kms/src/service"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/src/transport"
)

// BenchmarkRoundTrip makes tools/dev/bench's call mix over a unix socket, the
// client in this process, against the do-nothing plugin ("noop") and the
// KMS services, with and without the metrics interceptor as
// src/cmd/kms installs it. Client and server share the CPUs, so ns/op and
// allocs/op count both; the differences between the three are the
// server's. go test -run '^$' -bench RoundTrip ./tools/dev/bench/load
func BenchmarkRoundTrip(b *testing.B) {
	ring := filepath.Join(b.TempDir(), "keyring")
	testbin.WriteKeyring(b, ring, testbin.NewKey())
	keys, err := keysource.New(keysource.Config{Command: "cat " + ring, Timeout: time.Hour,
		CommandTimeout: time.Minute, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer keys.Close()
	if err := keys.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	for _, v := range []struct {
		name  string
		build func() *grpc.Server
	}{
		{"noop", func() *grpc.Server {
			gs := transport.NewServer(transport.IdleTimeout)
			RegisterNoop(gs)
			return gs
		}},
		{"kms", func() *grpc.Server {
			gs := transport.NewServer(transport.IdleTimeout)
			service.Register(gs, keys, "bench")
			return gs
		}},
		{"kms+metrics", func() *grpc.Server {
			met := metrics.New("bench", &v1beta1.KeyManagementService_ServiceDesc, &v2.KeyManagementService_ServiceDesc)
			gs := transport.NewServer(transport.IdleTimeout, grpc.UnaryInterceptor(met.UnaryInterceptor(nil)))
			service.Register(gs, keys, "bench")
			return gs
		}},
		// --allow-uid and --audit-log, as src/cmd/kms sets them up.
		{"kms+metrics+peercred+audit", func() *grpc.Server {
			met := metrics.New("bench", &v1beta1.KeyManagementService_ServiceDesc, &v2.KeyManagementService_ServiceDesc)
			al, err := audit.Open(filepath.Join(b.TempDir(), "audit.log"), slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(al.Close)
			gs := transport.NewServer(transport.IdleTimeout, grpc.UnaryInterceptor(met.UnaryInterceptor(al)), grpc.Creds(peercred.Credentials{}))
			service.Register(gs, keys, "bench")
			return gs
		}},
	} {
		b.Run(v.name, func(b *testing.B) {
			gs := v.build()
			var c *Client
			if strings.Contains(v.name, "peercred") {
				c = serveListener(b, gs, func(l net.Listener) net.Listener {
					return peercred.Listen(l, peercred.Policy{UIDs: []uint32{uint32(os.Geteuid())}}, slog.New(slog.DiscardHandler))
				})
			} else {
				c = serve(b, gs)
			}
			corpus, err := NewCorpus(context.Background(), c, 100)
			if err != nil {
				b.Fatal(err)
			}
			op := corpus.Workload(c, AllKinds)
			var seq atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(32) // 64 callers on 2 CPUs, as tools/dev/bench
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := op(context.Background(), 0, int(seq.Add(1))); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
