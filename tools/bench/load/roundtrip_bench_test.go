package load

import (
	"context"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/metrics"
	kmsserver "github.com/cmdkms/kms/src/server"
	"github.com/cmdkms/kms/src/testbin"
)

type staticKeys struct{ set *codec.Set }

func (k staticKeys) Keys() *codec.Set { return k.set }

// BenchmarkRoundTrip makes tools/bench's call mix over a unix socket, the
// client in this process, against the do-nothing plugin ("noop") and the
// KMS services, with and without the metrics interceptor as
// src/cmd/kms installs it. Client and server share the CPUs, so ns/op and
// allocs/op count both; the differences between the three are the
// server's. go test -run '^$' -bench RoundTrip ./tools/bench/load
func BenchmarkRoundTrip(b *testing.B) {
	k, err := kek.NewKey(testbin.NewKey())
	if err != nil {
		b.Fatal(err)
	}
	ck, err := codec.NewKey(k)
	if err != nil {
		b.Fatal(err)
	}
	keys := staticKeys{codec.NewSet([]*codec.Key{ck})}
	for _, v := range []struct {
		name  string
		build func() *grpc.Server
	}{
		{"noop", func() *grpc.Server {
			gs := kmsserver.NewGRPCServer()
			RegisterNoop(gs)
			return gs
		}},
		{"kms", func() *grpc.Server {
			gs := kmsserver.NewGRPCServer()
			kmsserver.Register(gs, keys, codec.AESGCM, "bench")
			return gs
		}},
		{"kms+metrics", func() *grpc.Server {
			met := metrics.New("bench", &v1beta1.KeyManagementService_ServiceDesc, &v2.KeyManagementService_ServiceDesc)
			gs := kmsserver.NewGRPCServer(grpc.UnaryInterceptor(met.UnaryInterceptor()))
			kmsserver.Register(gs, keys, codec.AESGCM, "bench")
			return gs
		}},
	} {
		b.Run(v.name, func(b *testing.B) {
			c := serve(b, v.build())
			corpus, err := NewCorpus(context.Background(), c, 100)
			if err != nil {
				b.Fatal(err)
			}
			op := corpus.Workload(c, AllKinds)
			var seq atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(32) // 64 callers on 2 CPUs, as tools/bench
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
