// Package transport builds the gRPC server of a KMS socket, with the
// limits that bound what its clients can make the daemon hold
// (docs/security.md). The daemon and tools/dev/bench's do-nothing plugin both use it,
// so that the two differ only in the work they do per call.
package transport

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/cmdkms/kms/src/codec"
)

const (
	// MaxConnections is how many client connections are served at once;
	// more wait, unanswered, until one closes. kube-apiserver keeps one
	// per KMS provider entry of its configuration: a few.
	MaxConnections = 16
	// MaxStreams is how many calls one connection may have open. A client
	// with more waits for a free one (gRPC clients do so by themselves),
	// and a call whose answer the client never reads keeps its stream.
	// With MaxConnections, this bounds what unread answers can hold:
	// 16 x 64 x MaxMessage, about 66 MiB. Fewer streams cost a client
	// with many calls at once dearly: at 16, 64 callers on one connection
	// got a third less throughput and twice the p99 (docs/performance.md).
	MaxStreams = 64
	// MaxMessage is the largest request accepted: the largest ciphertext
	// kms makes, and room for a KMS v2 key_id (at most 1 KiB) and uid.
	MaxMessage = codec.MaxCiphertext + 2<<10
	// IdleTimeout closes a connection with no call in flight for this long
	// (HTTP/2 GOAWAY). gRPC clients dial again by themselves on their next
	// call; kube-apiserver's KMS v2 client calls Status every minute, so
	// its connection never idles this long.
	IdleTimeout = 5 * time.Minute
	// HandshakeTimeout closes a connection that has not completed its
	// HTTP/2 preface this long after it was accepted.
	HandshakeTimeout = 10 * time.Second
	// maxHeaderList bounds a call's metadata. gRPC's own default, 16 MiB,
	// would let each stream hold that much; kube-apiserver sends a few
	// hundred bytes.
	maxHeaderList = 16 << 10
	// streamWorkers is how many goroutines stand ready to run calls. More
	// calls at once than this still run, each on a goroutine of its own.
	streamWorkers = 64
)

// pool serves the buffers gRPC reads requests into: its largest tier is the
// largest message with gRPC's 5-byte frame header. gRPC's default pool
// serves any buffer over 32 KiB from a tier of 1 MiB buffers: an unread
// 60 KB answer held a megabyte.
var pool = mem.NewTieredBufferPool(256, 4<<10, 16<<10, 32<<10, MaxMessage+5)

// NewServer returns a gRPC server with the transport's limits, then opts.
// idle is IdleTimeout unless a test needs it shorter.
func NewServer(idle time.Duration, opts ...grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append([]grpc.ServerOption{
		grpc.MaxConcurrentStreams(MaxStreams),
		grpc.MaxRecvMsgSize(MaxMessage),
		grpc.MaxHeaderListSize(maxHeaderList),
		// Fixed windows: gRPC's default grows them with the measured
		// bandwidth, up to 16 MiB a stream, which a client could fill.
		grpc.StaticStreamWindowSize(int32(MaxMessage)),
		grpc.StaticConnWindowSize(int32(MaxStreams * MaxMessage)),
		experimental.BufferPool(pool),
		grpc.ForceServerCodecV2(protoCodec{}),
		grpc.ConnectionTimeout(HandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: idle}),
		// gRPC's default, said here: a client pinging more often than every
		// 5 minutes, or with no call in flight, is disconnected.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Minute}),
		// A KMS call is a few microseconds of work. By default gRPC starts a
		// goroutine per call, which then spends as long again growing its
		// stack through the handler path (golang/go#18138); standing workers
		// keep theirs grown.
		grpc.NumStreamWorkers(streamWorkers),
	}, opts...)...)
}

// Listener serves at most MaxConnections connections at once. Further
// clients wait, unanswered, in the kernel's listen queue until one closes.
type Listener struct {
	net.Listener
	slots chan struct{} // one per connection open, and one for an Accept under way
	open  atomic.Int64
	done  chan struct{}
	once  sync.Once
}

// Limit caps l at MaxConnections connections.
func Limit(l net.Listener) *Listener {
	return &Listener{Listener: l, slots: make(chan struct{}, MaxConnections), done: make(chan struct{})}
}

func (l *Listener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	l.open.Add(1)
	return &conn{Conn: c, release: func() { l.open.Add(-1); <-l.slots }}, nil
}

func (l *Listener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { close(l.done) })
	return err
}

// Open says how many connections are open.
func (l *Listener) Open() int { return int(l.open.Load()) }

// conn gives its slot back when closed.
type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// NetConn returns the connection c wraps, as tls.Conn's does: src/peercred
// reads the caller's credentials from its file descriptor.
func (c *conn) NetConn() net.Conn { return c.Conn }

// protoCodec is gRPC's proto codec without its default buffer pool (see
// pool): an answer is marshalled into a buffer of its own size, and a
// request that arrived in several frames is joined in a buffer from pool.
type protoCodec struct{}

func (protoCodec) Name() string { return "proto" }

func (protoCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("proto: cannot marshal %T", v)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (protoCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("proto: cannot unmarshal into %T", v)
	}
	buf := data.MaterializeToBuffer(pool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}
