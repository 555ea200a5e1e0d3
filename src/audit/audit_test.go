package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"

	v2 "github.com/cmdkms/kms/proto/v2"
)

// Whatever a caller puts in key_id or request_uid, the line is one line
// of JSON that reads back to the same string (invalid UTF-8 replaced).
func TestAppendStringIsJSON(t *testing.T) {
	for _, s := range []string{"", "kek1-00ff", `quote " and \ backslash`, "new\nline\r\ttab\x00nul\x7fdel", "ünïcødé ☃", "bad \xff utf-8", "\u2028 separators \u2029"} {
		b := appendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q -> %s: %v", s, b, err)
		}
		want := string([]rune(s)) // invalid UTF-8 becomes U+FFFD, as in the line
		if got != want {
			t.Errorf("%q -> %s -> %q", s, b, got)
		}
		for _, c := range b {
			if c == '\n' {
				t.Errorf("%q -> %s holds a newline", s, b)
			}
		}
	}
}

// Record is on every call's path: it must not allocate.
func TestRecordDoesNotAllocate(t *testing.T) {
	l, err := Open(filepath.Join(t.TempDir(), "audit.log"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	req := &v2.DecryptRequest{KeyId: "kek1-00", Uid: "u"}
	resp := &v2.DecryptResponse{}
	now := time.Now()
	if n := testing.AllocsPerRun(1000, func() { l.Record(ctx, req, resp, codes.OK, now, time.Microsecond) }); n != 0 {
		t.Errorf("Record: %v allocations per call", n)
	}
}

// A writer stuck on a slow disk (here a pipe nobody reads) fills the
// queue: then records are dropped and counted, and calls never wait.
func TestFullQueueDrops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	// A reader that never reads, so that opening for writing succeeds
	// and writes block once the pipe's buffer is full.
	r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var logged bytes.Buffer
	l, err := Open(path, slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := &v2.EncryptRequest{Uid: "u"}
	const n = 2 * queueSize
	began := time.Now()
	for range n {
		l.Record(ctx, req, nil, codes.OK, began, time.Microsecond)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("%d records took %v to queue: calls waited for the writer", n, took)
	}
	if got := testutil.ToFloat64(l.queueFull); got < n/4 {
		t.Errorf("dropped %v of %d records with a stuck writer", got, n)
	}
	// Reading the pipe unblocks the writer, which writes the queue and
	// stops.
	go io.Copy(io.Discard, r)
	l.Close()
	if got, dropped := testutil.ToFloat64(l.written), testutil.ToFloat64(l.queueFull); got+dropped != n {
		t.Errorf("written %v + dropped %v != %d", got, dropped, n)
	}
	if !strings.Contains(logged.String(), "the queue was full") {
		t.Errorf("no log line about the dropped records:\n%s", logged.String())
	}
}
