package main

// --audit-log with the real daemon: a line per Encrypt and Decrypt, v1 and
// v2, failed ones included; no secret bytes; reopened on SIGHUP; a full
// disk drops and counts records and never fails a call.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
)

type auditLine struct {
	Time       time.Time `json:"time"`
	API        string    `json:"api"`
	Op         string    `json:"op"`
	KeyID      string    `json:"key_id"`
	RequestUID string    `json:"request_uid"`
	PeerUID    *int      `json:"peer_uid"`
	PeerGID    *int      `json:"peer_gid"`
	PeerPID    *int      `json:"peer_pid"`
	Code       string    `json:"code"`
	DurationUS *int64    `json:"duration_us"`
}

// readAudit parses every line of the audit log at path; each must be one
// JSON object.
func readAudit(t *testing.T, path string) []auditLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []auditLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var l auditLine
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

func TestAuditLog(t *testing.T) {
	ctx := context.Background()
	dir := testbin.ShortDir(t)
	sock, ring, path := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring"), filepath.Join(dir, "audit.log")
	secret := testbin.NewKey()
	testbin.WriteKeyring(t, ring, secret)
	d := startDaemon(t, sock, "--command", "cat "+ring, "--audit-log", path, "--health-address", "127.0.0.1:0")
	base := healthURL(t, d)
	id := keyStatus(t, d).KeyId // Status is not audited

	dek := []byte("0123456789abcdef-a-dek-of-32-byt")
	v1enc, err := d.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: dek})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: v1enc.Cipher}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: []byte("not a ciphertext")}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("v1 decrypt of garbage: %v", err)
	}
	v2enc, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: dek, Uid: "uid-enc"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: v2enc.Ciphertext, KeyId: v2enc.KeyId, Uid: "uid-dec"}); err != nil {
		t.Fatal(err)
	}
	// A key id that is no JSON-friendly string stays inside its field.
	badID := "kek1-\"}\n{\"forged\":1"
	if _, err := d.v2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: v2enc.Ciphertext, KeyId: badID, Uid: "uid-bad"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("v2 decrypt with an unknown key id: %v", err)
	}
	testbin.WaitFor(t, "6 audit records written", 10*time.Second, func() bool {
		return scrape(t, base).value(t, "kms_audit_written_total") == 6
	})

	lines := readAudit(t, path)
	want := []auditLine{
		{API: "v1beta1", Op: "encrypt", KeyID: id, Code: "OK"},
		{API: "v1beta1", Op: "decrypt", KeyID: id, Code: "OK"},
		{API: "v1beta1", Op: "decrypt", KeyID: "", Code: "InvalidArgument"},
		{API: "v2", Op: "encrypt", KeyID: id, RequestUID: "uid-enc", Code: "OK"},
		{API: "v2", Op: "decrypt", KeyID: id, RequestUID: "uid-dec", Code: "OK"},
		{API: "v2", Op: "decrypt", KeyID: badID, RequestUID: "uid-bad", Code: "FailedPrecondition"},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d audit lines, want %d:\n%+v", len(lines), len(want), lines)
	}
	for i, l := range lines {
		w := want[i]
		if l.API != w.API || l.Op != w.Op || l.KeyID != w.KeyID || l.RequestUID != w.RequestUID || l.Code != w.Code {
			t.Errorf("line %d: %+v, want %+v", i, l, w)
		}
		// The caller is this test process.
		if l.PeerUID == nil || *l.PeerUID != os.Geteuid() || l.PeerGID == nil || *l.PeerGID != os.Getegid() || l.PeerPID == nil || *l.PeerPID != os.Getpid() {
			t.Errorf("line %d: peer %v/%v/%v, want uid %d gid %d pid %d", i, l.PeerUID, l.PeerGID, l.PeerPID, os.Geteuid(), os.Getegid(), os.Getpid())
		}
		if l.DurationUS == nil || *l.DurationUS < 0 || time.Since(l.Time) > time.Minute || time.Since(l.Time) < 0 {
			t.Errorf("line %d: time %v, duration_us %v", i, l.Time, l.DurationUS)
		}
	}

	// No secret in the file, in any encoding: not the KEK, not the DEK,
	// not the ciphertexts.
	file, _ := os.ReadFile(path)
	for name, s := range map[string][]byte{"KEK": secret, "DEK": dek, "v1 ciphertext": v1enc.Cipher, "v2 ciphertext": v2enc.Ciphertext} {
		for _, enc := range []string{string(s), hex.EncodeToString(s), base64.StdEncoding.EncodeToString(s), base64.RawStdEncoding.EncodeToString(s)} {
			if bytes.Contains(file, []byte(enc)) {
				t.Errorf("the audit log holds the %s", name)
			}
		}
	}
	if bytes.Contains(file, dek[:16]) {
		t.Error("the audit log holds part of the DEK")
	}

	// logrotate: rename, SIGHUP (postrotate), and the next lines go to a
	// new file at the path.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	d.Signal(syscall.SIGHUP)
	testbin.WaitFor(t, "the audit log reopened", 10*time.Second, func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
	if _, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: dek, Uid: "after-rotation"}); err != nil {
		t.Fatal(err)
	}
	testbin.WaitFor(t, "the record after rotation", 10*time.Second, func() bool {
		return scrape(t, base).value(t, "kms_audit_written_total") == 7
	})
	if old := readAudit(t, path+".1"); len(old) != 6 {
		t.Errorf("rotated file: %d lines, want 6", len(old))
	}
	if cur := readAudit(t, path); len(cur) != 1 || cur[0].RequestUID != "after-rotation" {
		t.Errorf("new file: %+v", cur)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("new audit log: %v, mode %v; want 0600", err, fi.Mode())
	}
	m := scrape(t, base)
	for _, reason := range []string{"queue_full", "write_failed"} {
		if got := m.value(t, "kms_audit_dropped_total", "reason="+reason); got != 0 {
			t.Errorf("kms_audit_dropped_total{reason=%s} = %v", reason, got)
		}
	}
	// Both happen on SIGHUP: the reopen and the KEK command's run.
	testbin.WaitFor(t, "the KEK command's run on SIGHUP", 10*time.Second, func() bool {
		return scrape(t, base).value(t, "kms_kek_command_runs_total", "outcome=success") == 2
	})
}

// A full disk: calls go on, the records that cannot be written are
// dropped and counted, no half line is left, and writing resumes once
// there is room again.
func TestAuditLogDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	ctx := context.Background()
	dir := testbin.ShortDir(t)
	mnt := filepath.Join(dir, "small")
	os.Mkdir(mnt, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	sock, ring, path := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring"), filepath.Join(mnt, "audit.log")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := startDaemon(t, sock, "--command", "cat "+ring, "--audit-log", path, "--health-address", "127.0.0.1:0")
	base := healthURL(t, d)
	encrypt := func(i int) {
		t.Helper()
		if _, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("dek"), Uid: "call"}); err != nil {
			t.Fatalf("call %d failed: %v", i, err)
		}
	}
	// Some records while there is room.
	const before = 5
	for i := range before {
		encrypt(i)
	}
	testbin.WaitFor(t, "the first records written", 10*time.Second, func() bool {
		return scrape(t, base).value(t, "kms_audit_written_total") == before
	})

	// Fill the rest of the disk but for a little room.
	filler := filepath.Join(mnt, "filler")
	f, _ := os.Create(filler)
	for {
		if _, err := f.Write(make([]byte, 512)); err != nil {
			break
		}
	}
	f.Close()
	os.Truncate(filler, mustSize(t, filler)-8192) // two pages

	// More than fits: batches that fit are written, and the first that
	// does not is written in part, until the disk is full.
	const n = 200
	for i := before; i < n; i++ {
		encrypt(i)
	}
	var written, dropped float64
	testbin.WaitFor(t, "every record written or dropped", 10*time.Second, func() bool {
		m := scrape(t, base)
		written, dropped = m.value(t, "kms_audit_written_total"), m.value(t, "kms_audit_dropped_total", "reason=write_failed")
		return written+dropped == n
	})
	if written < before || dropped == 0 {
		t.Fatalf("written %v, dropped %v: want some of each", written, dropped)
	}
	errs := scrape(t, base).value(t, "kms_audit_write_errors_total")
	if errs < 1 {
		t.Errorf("kms_audit_write_errors_total = %v", errs)
	}
	if lines := readAudit(t, path); len(lines) != int(written) {
		t.Errorf("%d whole lines in the file, %v counted written", len(lines), written)
	}
	// A line per spell of failures, not per failed write. (A smaller
	// batch may still fit after a larger one failed: then a spell ends.)
	if n := strings.Count(d.Stderr(), "audit log: write failed"); n < 1 || float64(n) > errs {
		t.Errorf("%d log lines about %v failed writes:\n%s", n, errs, d.Stderr())
	}

	os.Remove(filler)
	if _, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("dek"), Uid: "room again"}); err != nil {
		t.Fatal(err)
	}
	testbin.WaitFor(t, "the record once there is room", 10*time.Second, func() bool {
		return scrape(t, base).value(t, "kms_audit_written_total") == written+1
	})
	lines := readAudit(t, path)
	if last := lines[len(lines)-1]; last.RequestUID != "room again" {
		t.Errorf("last line %+v", last)
	}
	d.WaitLog(t, "audit log: writing again", 5*time.Second)
}

func mustSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
