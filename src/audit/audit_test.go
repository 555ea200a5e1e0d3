package audit

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

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
