// Package audit writes the audit trail of key use: one JSON line per KMS
// Encrypt and Decrypt call, v1beta1 and v2, failed ones included, saying
// when, which API and operation, which key, which caller (its uid, gid and
// pid, from src/peercred), the outcome and how long it took. Never key
// material, plaintext or ciphertext (docs/security.md, docs/operating.md).
//
// A call only queues its record; one goroutine formats and writes them in
// the order they were queued. When the queue is full (the disk is slow or
// full) the record is dropped and counted: a call never waits for the
// disk (docs/security.md says why).
package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/peercred"
)

const (
	// queueSize records wait for the writer at most: about a megabyte, and
	// a quarter second of calls at the daemon's highest measured rate
	// (docs/performance.md), longer than a healthy disk ever stalls.
	queueSize = 8192
	// maxBatch bytes are written at once at most.
	maxBatch = 64 << 10
	// gather is how long the writer lets records queue before it writes
	// them: a record reaches the file at most this late, unless the disk
	// is slow.
	gather = 10 * time.Millisecond
	// warnEvery limits the log lines about dropped records.
	warnEvery = 10 * time.Second
)

// Reasons a record is dropped, the values of kms_audit_dropped_total's
// reason label.
const (
	ReasonQueueFull   = "queue_full"
	ReasonWriteFailed = "write_failed"
)

// Log is an open audit log.
type Log struct {
	path   string
	log    *slog.Logger
	queue  chan record
	reopen chan struct{}
	stop   chan struct{}
	done   chan struct{}

	written     prometheus.Counter
	writeErrors prometheus.Counter
	dropped     *prometheus.CounterVec
	queueFull   prometheus.Counter
	// fullSince counts records dropped for a full queue since the writer
	// last said so in the log.
	fullSince atomic.Int64
}

// record is one call; formatted by the writer, off the call's path.
type record struct {
	start      time.Time
	took       time.Duration
	api, op    string
	keyID      string // as the call named it (v2)
	headerID   kek.ID // as the ciphertext's header names it (v1), if hasHeader
	hasHeader  bool
	requestUID string
	peer       peercred.Creds
	hasPeer    bool
	code       codes.Code
}

// Open opens (creating it, 0600) the audit log at path for appending and
// starts its writer.
func Open(path string, log *slog.Logger) (*Log, error) {
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kms_audit_dropped_total",
		Help: "Audit records lost, by reason: queue_full (the writer fell behind: slow disk), write_failed (the write failed: full disk, I/O error).",
	}, []string{"reason"})
	l := &Log{
		path:   path,
		log:    log,
		queue:  make(chan record, queueSize),
		reopen: make(chan struct{}, 1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kms_audit_written_total",
			Help: "Audit records written to --audit-log.",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kms_audit_write_errors_total",
			Help: "Failed writes and reopens of --audit-log.",
		}),
		dropped:   dropped,
		queueFull: dropped.WithLabelValues(ReasonQueueFull),
	}
	dropped.WithLabelValues(ReasonWriteFailed)
	go l.run(f)
	return l, nil
}

func openFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return f, nil
}

// Collectors are the kms_audit_* metrics.
func (l *Log) Collectors() []prometheus.Collector {
	return []prometheus.Collector{l.written, l.writeErrors, l.dropped}
}

// Reopen makes the writer reopen the file at its path (after logrotate
// renamed it) before it writes again.
func (l *Log) Reopen() {
	select {
	case l.reopen <- struct{}{}:
	default: // one is pending already
	}
}

// Close writes what is queued, closes the file and returns once done.
// Records of calls still running are dropped.
func (l *Log) Close() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

// Record queues the record of a KMS call; it is metrics.Recorder. Only
// Encrypt and Decrypt are recorded.
func (l *Log) Record(ctx context.Context, req, resp any, code codes.Code, start time.Time, took time.Duration) {
	r := record{start: start, took: took, api: "v2", code: code}
	switch m := req.(type) {
	case *v2.EncryptRequest:
		r.op, r.requestUID = "encrypt", m.Uid
		if resp, ok := resp.(*v2.EncryptResponse); ok && resp != nil {
			r.keyID = resp.KeyId
		}
	case *v2.DecryptRequest:
		r.op, r.requestUID, r.keyID = "decrypt", m.Uid, m.KeyId
	case *v1beta1.EncryptRequest:
		r.api, r.op = "v1beta1", "encrypt"
		if resp, ok := resp.(*v1beta1.EncryptResponse); ok && resp != nil {
			r.headerID, r.hasHeader = codec.NamedKey(resp.Cipher)
		}
	case *v1beta1.DecryptRequest:
		r.api, r.op = "v1beta1", "decrypt"
		r.headerID, r.hasHeader = codec.NamedKey(m.Cipher)
	default:
		return
	}
	r.peer, r.hasPeer = peercred.FromContext(ctx)
	select {
	case l.queue <- r:
	default:
		l.queueFull.Inc()
		l.fullSince.Add(1)
	}
}

// run is the writer: it owns f until Close.
func (l *Log) run(f *os.File) {
	defer close(l.done)
	defer func() { f.Close() }()
	buf := make([]byte, 0, maxBatch+4<<10)
	var failing bool
	var lastWarn time.Time
	for {
		select {
		case r := <-l.queue:
			// Let the calls of the next moments queue up behind this one:
			// under load the writer then wakes and writes once per gather,
			// not once per call (a wake-up and a write system call each).
			if len(l.queue) < queueSize/8 {
				time.Sleep(gather)
			}
			var n int
			buf, n = l.batch(r, buf[:0])
			failing = l.write(f, buf, n, failing)
		case <-l.reopen:
			nf, err := openFile(l.path)
			if err != nil {
				// Keep writing to the old file: records in a renamed file
				// are better than none.
				l.writeErrors.Inc()
				l.log.Error("audit log: cannot reopen; still writing to the file opened before", "path", l.path, "err", err)
				continue
			}
			f.Close()
			f = nf
		case <-l.stop:
			for {
				select {
				case r := <-l.queue:
					var n int
					buf, n = l.batch(r, buf[:0])
					failing = l.write(f, buf, n, failing)
					continue
				default:
				}
				l.warnDropped(&lastWarn, true)
				return
			}
		}
		l.warnDropped(&lastWarn, false)
	}
}

// warnDropped logs how many records a full queue cost since it last did,
// at most once per warnEvery unless final.
func (l *Log) warnDropped(last *time.Time, final bool) {
	if n := l.fullSince.Load(); n > 0 && (final || time.Since(*last) >= warnEvery) {
		l.fullSince.Add(-n)
		*last = time.Now()
		l.log.Warn("audit log: the queue was full (the disk is slow); records were dropped (kms_audit_dropped_total)", "dropped", n)
	}
}

// batch formats r and whatever else is queued, up to maxBatch bytes.
func (l *Log) batch(r record, buf []byte) ([]byte, int) {
	buf = appendRecord(buf, &r)
	n := 1
	for len(buf) < maxBatch {
		select {
		case r := <-l.queue:
			buf = appendRecord(buf, &r)
			n++
		default:
			return buf, n
		}
	}
	return buf, n
}

// write writes the n records in buf. A write that fails leaves no part of
// them in the file, so every line stays whole JSON: when the disk filled
// up midway, what was written is cut off again. failing says whether the
// previous write failed; the log says so once per failing spell.
func (l *Log) write(f *os.File, buf []byte, n int, failing bool) bool {
	w, err := f.Write(buf)
	if err == nil {
		l.written.Add(float64(n))
		if failing {
			l.log.Info("audit log: writing again")
		}
		return false
	}
	l.writeErrors.Inc()
	l.dropped.WithLabelValues(ReasonWriteFailed).Add(float64(n))
	if w > 0 {
		if end, serr := f.Seek(0, io.SeekCurrent); serr == nil {
			err = errors.Join(err, f.Truncate(end-int64(w)))
		}
	}
	if !failing {
		l.log.Error("audit log: write failed; records are dropped until a write succeeds (kms_audit_dropped_total)", "path", l.path, "err", err)
	}
	return true
}

// appendRecord formats r as a line of JSON.
func appendRecord(b []byte, r *record) []byte {
	b = append(b, `{"time":"`...)
	b = r.start.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z")
	b = append(b, `","api":"`...)
	b = append(b, r.api...)
	b = append(b, `","op":"`...)
	b = append(b, r.op...)
	b = append(b, `","key_id":`...)
	if r.hasHeader {
		b = append(b, '"')
		b = append(b, r.headerID.String()...)
		b = append(b, '"')
	} else {
		b = appendString(b, r.keyID)
	}
	b = append(b, `,"request_uid":`...)
	b = appendString(b, r.requestUID)
	if r.hasPeer {
		b = append(b, `,"peer_uid":`...)
		b = strconv.AppendUint(b, uint64(r.peer.UID), 10)
		b = append(b, `,"peer_gid":`...)
		b = strconv.AppendUint(b, uint64(r.peer.GID), 10)
		b = append(b, `,"peer_pid":`...)
		b = strconv.AppendInt(b, int64(r.peer.PID), 10)
	}
	b = append(b, `,"code":"`...)
	b = append(b, r.code.String()...)
	b = append(b, `","duration_us":`...)
	b = strconv.AppendInt(b, r.took.Microseconds(), 10)
	return append(b, "}\n"...)
}

// appendString appends s as a JSON string. key_id and request_uid come
// from the caller: quotes, control characters and invalid UTF-8 are
// escaped or replaced so that a line stays one line of valid JSON.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
