package transport

import (
	"bytes"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
)

func TestLimit(t *testing.T) {
	sock := filepath.Join(testbin.ShortDir(t), "l.sock")
	inner, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l := Limit(inner)
	defer l.Close()
	accepted := make(chan net.Conn, MaxConnections+1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for range MaxConnections + 1 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	var served []net.Conn
	for range MaxConnections {
		served = append(served, <-accepted)
	}
	select {
	case <-accepted:
		t.Fatalf("accepted connection %d, over the limit", MaxConnections+1)
	case <-time.After(200 * time.Millisecond):
	}
	if n := l.Open(); n != MaxConnections {
		t.Fatalf("Open() = %d, want %d", n, MaxConnections)
	}
	served[0].Close()
	served[0].Close() // gives back one slot, not two
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting connection was not accepted when one closed")
	}
	testbin.WaitFor(t, "the slots to be given back", 10*time.Second, func() bool { return l.Open() == MaxConnections-1 })
}

// Requests that arrive in several frames are joined and decoded; what the
// pool hands out is the size of the largest request, not a megabyte.
func TestCodec(t *testing.T) {
	in := &v2.EncryptRequest{Plaintext: bytes.Repeat([]byte{7}, 60<<10), Uid: "u"}
	enc, err := protoCodec{}.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	b := enc.Materialize()
	frames := enc[:0]
	for len(b) > 0 { // as the transport reads them, 16 KiB at a time
		n := min(len(b), 16<<10)
		frames = append(frames, memSlice(b[:n]))
		b = b[n:]
	}
	out := &v2.EncryptRequest{}
	if err := (protoCodec{}).Unmarshal(frames, out); err != nil || !proto.Equal(in, out) {
		t.Fatalf("round trip: %v", err)
	}
	if buf := pool.Get(60 << 10); cap(*buf) > MaxMessage+5 {
		t.Fatalf("a 60 KiB buffer from the pool has capacity %d", cap(*buf))
	}
}

func memSlice(b []byte) mem.Buffer { return mem.SliceBuffer(bytes.Clone(b)) }
