package testbin

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// RawH2 is an HTTP/2 client that speaks just enough gRPC to open calls and
// then misbehave as a hostile client on the socket would: it can advertise
// a zero receive window (so no answer can ever be sent to it) and hold
// streams and connections open. Tests use it to show what such a client can
// and cannot make the daemon hold.
type RawH2 struct {
	conn net.Conn
	fr   *http2.Framer
	wmu  sync.Mutex // the framer's writer, the hpack encoder and next
	hbuf bytes.Buffer
	henc *hpack.Encoder
	next uint32 // next stream id

	mu         sync.Mutex
	cond       *sync.Cond
	sendWindow int64 // the server's connection-level window for our DATA
	maxFrame   uint32
	closed     error

	// Refused counts RST_STREAM frames (streams the server turned down);
	// Answered counts response HEADERS; GoAway is set when one arrives.
	Refused, Answered atomic.Int64
	GoAway            atomic.Bool
}

// DialRawH2 connects to the unix socket sock, sends the client preface and
// SETTINGS with the given initial window (0: the server may never send us
// any DATA), and starts reading what the server sends.
func DialRawH2(sock string, window uint32) (*RawH2, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	r := &RawH2{conn: c, fr: http2.NewFramer(c, c), next: 1, sendWindow: 65535, maxFrame: 16384}
	r.cond = sync.NewCond(&r.mu)
	r.henc = hpack.NewEncoder(&r.hbuf)
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		c.Close()
		return nil, err
	}
	if err := r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: window},
		http2.Setting{ID: http2.SettingEnablePush, Val: 0}); err != nil {
		c.Close()
		return nil, err
	}
	go r.read()
	return r, nil
}

func (r *RawH2) read() {
	var err error
	for {
		var f http2.Frame
		if f, err = r.fr.ReadFrame(); err != nil {
			break
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			f.ForeachSetting(func(s http2.Setting) error {
				if s.ID == http2.SettingMaxFrameSize {
					r.mu.Lock()
					r.maxFrame = s.Val
					r.mu.Unlock()
				}
				return nil
			})
			r.wmu.Lock()
			err = r.fr.WriteSettingsAck()
			r.wmu.Unlock()
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				r.mu.Lock()
				r.sendWindow += int64(f.Increment)
				r.cond.Broadcast()
				r.mu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				r.wmu.Lock()
				err = r.fr.WritePing(true, f.Data)
				r.wmu.Unlock()
			}
		case *http2.RSTStreamFrame:
			r.Refused.Add(1)
		case *http2.HeadersFrame:
			r.Answered.Add(1)
		case *http2.GoAwayFrame:
			r.GoAway.Store(true)
		}
		if err != nil {
			break
		}
	}
	r.mu.Lock()
	r.closed = err
	r.cond.Broadcast()
	r.mu.Unlock()
}

// Closed waits up to limit for the server to close the connection and
// says whether it did.
func (r *RawH2) Closed(limit time.Duration) bool {
	timer := time.AfterFunc(limit, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(limit)
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.closed == nil && time.Now().Before(deadline) {
		r.cond.Wait()
	}
	return r.closed != nil
}

// Call opens a stream for the gRPC method path (e.g.
// "/v2.KeyManagementService/Encrypt") and sends msg, a marshalled request,
// as its one message, honouring the server's connection window, so the
// server has all of it.
func (r *RawH2) Call(path string, msg []byte) error {
	r.wmu.Lock()
	id := r.next
	r.next += 2
	r.hbuf.Reset()
	for _, h := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", "localhost"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		r.henc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
	}
	err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hbuf.Bytes(), EndHeaders: true})
	r.wmu.Unlock()
	if err != nil {
		return err
	}
	body := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:], uint32(len(msg)))
	copy(body[5:], msg)
	for len(body) > 0 {
		r.mu.Lock()
		for r.sendWindow <= 0 && r.closed == nil {
			r.cond.Wait()
		}
		if r.closed != nil {
			r.mu.Unlock()
			return r.closed
		}
		n := min(int64(len(body)), r.sendWindow, int64(r.maxFrame))
		r.sendWindow -= n
		r.mu.Unlock()
		r.wmu.Lock()
		err := r.fr.WriteData(id, int(n) == len(body), body[:n])
		r.wmu.Unlock()
		if err != nil {
			return err
		}
		body = body[n:]
	}
	return nil
}

// Close closes the connection.
func (r *RawH2) Close() error { return r.conn.Close() }
