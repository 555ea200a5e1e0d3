package main

// The daemon as a process: PID 1 in a container, its memory as another
// process of the same user sees it, and its memory after a purge.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
)

const nobody = 65534

// zombies counts the exited, unreaped children of pid.
func zombies(t *testing.T, pid int) int {
	t.Helper()
	n := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after it.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			n++
		}
	}
	return n
}

// As PID 1 of its own PID namespace (a container without an init), kms
// reaps the orphans of its KEK command: children it left behind, and those
// of runs killed at --command-timeout. The command's own exit status still
// reaches kms: every run that succeeded is counted as a success.
func TestReapsOrphansAsPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a PID namespace")
	}
	dir := testbin.ShortDir(t)
	sock, ring, hang := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring"), filepath.Join(dir, "hang")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	// Each run leaves a child behind; while hang exists, a run hangs with
	// two children until it is killed.
	command := fmt.Sprintf("(sleep 0.1 &); if [ -e %s ]; then sleep 60 & sleep 60; fi; cat %s", hang, ring)
	cmd := exec.Command(testbin.KMS(t), "--command", command, "--command-timeout", "1s",
		"--health-address", "127.0.0.1:0", "--endpoint", "unix://"+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	d := connect(t, testbin.Start(t, cmd, testbin.Ready), sock)
	pid := d.Cmd.Process.Pid
	if !strings.Contains(d.Stderr(), "reaping orphaned processes") {
		t.Errorf("kms did not say that it reaps orphans as PID 1:\n%s", d.Stderr())
	}

	// Each SIGHUP waits for a run with the outcome it should have, so that
	// none is folded into the run before it. (A failed run is also retried
	// by itself, with backoff: there may be more timeouts than SIGHUPs.)
	url := healthURL(t, d)
	runs := func(outcome string) float64 {
		return scrape(t, url).value(t, "kms_kek_command_runs_total", "outcome="+outcome)
	}
	refresh := func(outcome string) {
		t.Helper()
		n := runs(outcome)
		d.Signal(syscall.SIGHUP)
		testbin.WaitFor(t, "a run ending in "+outcome, 30*time.Second, func() bool { return runs(outcome) > n })
	}
	for range 20 { // quick runs, each leaving an orphan
		refresh("success")
	}
	os.WriteFile(hang, nil, 0o600)
	for range 5 { // runs killed at the command timeout
		refresh("timeout")
	}
	os.Remove(hang)
	refresh("success")
	// A zombie lives from its exit to its reaping: wait out the last
	// run's orphan, which exits 0.1 s after the run.
	testbin.WaitFor(t, "no zombies under kms (PID 1) after 27 runs", 10*time.Second, func() bool { return zombies(t, pid) == 0 })
	if failed := runs("failed"); failed != 0 {
		t.Errorf("%v runs failed: a run's exit status was taken by the reaper", failed)
	}
	keyStatus(t, d)
}

// unprivileged copies the kms binary where another user can run it and
// makes dir theirs.
func unprivileged(t *testing.T, dir string) string {
	t.Helper()
	bin := copyKMS(t, dir)
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	return bin
}

// copyKMS copies the kms binary into dir, 0755, for tests that run it as
// other users (which only root can); dir's owner and mode are the caller's.
func copyKMS(t *testing.T, dir string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run processes as other users")
	}
	src, err := os.Open(testbin.KMS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "kms")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

func asNobody(cmd *exec.Cmd) *exec.Cmd {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	return cmd
}

// Another process of the daemon's own user cannot read its memory, and
// it writes no core file. Without CAP_IPC_LOCK and with a finite
// RLIMIT_MEMLOCK, --mlock auto does not lock and says so; required fails.
func TestMemoryIsPrivate(t *testing.T) {
	dir := testbin.ShortDir(t)
	bin := unprivileged(t, dir)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	os.Chown(ring, nobody, nobody)
	cmd := asNobody(exec.Command(bin, "--command", "cat "+ring, "--health-address", "127.0.0.1:0", "--endpoint", "unix://"+sock))
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	d := connect(t, testbin.Start(t, cmd, testbin.Ready), sock)
	pid := d.Cmd.Process.Pid

	var out bytes.Buffer
	peek := asNobody(exec.Command("/bin/sh", "-c", fmt.Sprintf("exec 3</proc/%d/mem && echo opened", pid)))
	peek.Stdout, peek.Stderr = &out, &out
	peek.Run()
	if strings.Contains(out.String(), "opened") {
		t.Errorf("a process of the same user opened /proc/%d/mem", pid)
	}
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if ok, _ := regexp.MatchString(`Max core file size\s+0\s+0`, string(limits)); !ok {
		t.Errorf("core files are not off:\n%s", limits)
	}
	if !strings.Contains(d.Stderr(), "memory not locked") || !strings.Contains(d.Stderr(), "no CAP_IPC_LOCK") {
		t.Errorf("no clear line about unlocked memory:\n%s", d.Stderr())
	}
	// Not dumpable, the daemon still reads its own /proc for its metrics.
	scrape(t, healthURL(t, d)).value(t, "process_open_fds")
	keyStatus(t, d)

	req := asNobody(exec.Command(bin, "--command", "cat "+ring, "--mlock", "required", "--endpoint", "unix://"+filepath.Join(dir, "r.sock")))
	if b, err := req.CombinedOutput(); err == nil || !strings.Contains(string(b), "--mlock required: cannot lock memory") {
		t.Errorf("--mlock required without the means to lock: %v\n%s", err, b)
	}
}

// The keys' bytes in the daemon's memory, read through /proc/PID/mem (as
// root): present while they are loaded, as many copies after ten refreshes
// as after one, and gone after a purge, even after more requests have
// churned the heap. The HMAC pads of the key id derivation (key XOR 0x36,
// 0x5c) are never left behind; nor are the copies of the key schedule that
// crypto/cipher's CBC makes per call.
func TestKeysLeaveMemoryOnPurge(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to read another process's memory")
	}
	for _, mode := range []string{"aesgcm", "aescbc"} {
		t.Run(mode, func(t *testing.T) {
			dir := testbin.ShortDir(t)
			sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring")
			a, b := testbin.NewKey(), testbin.NewKey()
			testbin.WriteKeyring(t, ring, a, b)
			d := startDaemon(t, sock, "--command", "cat "+ring, "--mode", mode,
				"--min-timeout", "2s", "--timeout", "3s", "--command-timeout", "1s")
			pid := d.Cmd.Process.Pid
			ctx := context.Background()
			use := func() {
				for i := range 200 {
					enc, err := d.v1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: "v1beta1", Plain: []byte(fmt.Sprintf("dek %032d", i))})
					if err != nil {
						t.Fatal(err)
					}
					if _, err := d.v1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: "v1beta1", Cipher: enc.Cipher}); err != nil {
						t.Fatal(err)
					}
				}
			}
			use()
			patterns := keyPatterns(a, b)
			loaded := scanMemory(t, pid, patterns)
			t.Logf("loaded: %v", loaded)
			if loaded["key a"] == 0 || loaded["key b"] == 0 {
				t.Fatalf("the keys are not found while loaded (%v): the scan does not work", loaded)
			}
			for p, n := range loaded {
				if strings.HasPrefix(p, "pad") && n != 0 {
					t.Errorf("%s: %d copies while loaded, want 0", p, n)
				}
			}
			for range 10 {
				d.Signal(syscall.SIGHUP)
				use()
			}
			refreshed := scanMemory(t, pid, patterns)
			t.Logf("after 10 refreshes: %v", refreshed)
			for p, n := range refreshed {
				if n > loaded[p] {
					t.Errorf("%s: %d copies after 10 refreshes, %d after the first load", p, n, loaded[p])
				}
			}

			os.Remove(ring)
			testbin.WaitFor(t, "the purge", 30*time.Second, func() bool { return strings.Contains(d.Stderr(), "KEK purged") })
			for range 2000 {
				d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("after the purge")})
			}
			purged := scanMemory(t, pid, patterns)
			t.Logf("purged, then 2000 requests: %v", purged)
			for p, n := range purged {
				if n != 0 {
					t.Errorf("%s: %d copies in memory after the purge", p, n)
				}
			}
		})
	}
}

// keyPatterns are the byte strings that give a key away: the key, and its
// HMAC-SHA256 pads (the key XOR 0x36 or 0x5c, in the first 32 bytes of the
// 64-byte block).
func keyPatterns(a, b []byte) map[string][]byte {
	xor := func(k []byte, c byte) []byte {
		out := bytes.Clone(k)
		for i := range out {
			out[i] ^= c
		}
		return out
	}
	return map[string][]byte{
		"key a": a, "pad a^0x36": xor(a, 0x36), "pad a^0x5c": xor(a, 0x5c),
		"key b": b, "pad b^0x36": xor(b, 0x36), "pad b^0x5c": xor(b, 0x5c),
	}
}

// scanMemory counts each pattern in every readable mapping of pid.
func scanMemory(t *testing.T, pid int, patterns map[string][]byte) map[string]int {
	t.Helper()
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	counts := map[string]int{}
	for p := range patterns {
		counts[p] = 0
	}
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[1][0] != 'r' || strings.HasSuffix(sc.Text(), "[vvar]") {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		buf := make([]byte, end-start)
		n, _ := mem.ReadAt(buf, int64(start))
		for p, pat := range patterns {
			counts[p] += bytes.Count(buf[:n], pat)
		}
	}
	return counts
}

// With the means to (root: CAP_IPC_LOCK), --mlock auto locks the daemon's
// memory, and it still serves within the memory a static pod allows it.
func TestMemoryLockedWherePossible(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs CAP_IPC_LOCK")
	}
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "ring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := startDaemon(t, sock, "--command", "cat "+ring)
	keyStatus(t, d)
	locked, rss := testbin.ProcStatus(t, d.Cmd.Process.Pid, "VmLck"), testbin.ProcStatus(t, d.Cmd.Process.Pid, "VmRSS")
	t.Logf("locked %.1f MiB of %.1f MiB resident", float64(locked)/(1<<20), float64(rss)/(1<<20))
	if !strings.Contains(d.Stderr(), "memory locked") || locked == 0 {
		t.Fatalf("memory not locked (VmLck %d):\n%s", locked, d.Stderr())
	}
	if rss >= testbin.MaxDaemonRSS {
		t.Errorf("RSS %.1f MiB with memory locked", float64(rss)/(1<<20))
	}
	off := startDaemon(t, filepath.Join(dir, "off.sock"), "--command", "cat "+ring, "--mlock", "off")
	if n := testbin.ProcStatus(t, off.Cmd.Process.Pid, "VmLck"); n != 0 || !strings.Contains(off.Stderr(), "--mlock off") {
		t.Errorf("--mlock off: %d bytes locked:\n%s", n, off.Stderr())
	}
}
