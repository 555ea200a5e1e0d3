package main

// Hostile clients on the socket: what they can make the daemon hold.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/src/transport"
)

const maxRSS = 64 << 20

// Four connections that each open 1000 Encrypt calls of 60 KB and never
// let the daemon send an answer (zero receive window). A fifth connection,
// as kube-apiserver's, is served quickly throughout, and the daemon's peak
// RSS stays under 64 MiB.
func TestUnreadStreamsAreBounded(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := startDaemon(t, sock, "--command", "cat "+ring)
	pid := d.Cmd.Process.Pid

	// The attackers run in a process of their own, as they would on a node:
	// in this one they would compete with the honest client for its threads,
	// and its latency would measure the test's scheduler, not the daemon.
	attack := exec.Command(os.Args[0], "-test.run=^$")
	attack.Env = append(os.Environ(), attackEnv+"="+sock)
	attack.Stderr = os.Stderr
	toAttack, err := attack.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	fromAttack, err := attack.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := attack.Start(); err != nil {
		t.Fatal(err)
	}
	defer attack.Process.Kill()
	report := bufio.NewScanner(fromAttack)

	// The honest client calls throughout the attack and a while after it.
	stop := make(chan struct{})
	var latencies []time.Duration
	var failures []error
	honest := make(chan struct{})
	go func() {
		defer close(honest)
		ctx := context.Background()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			began := time.Now()
			_, err := d.v2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("0123456789abcdef0123456789abcdef")})
			latencies = append(latencies, time.Since(began))
			if err != nil {
				failures = append(failures, err)
			}
		}
	}()

	if !report.Scan() { // the attack is sent
		t.Fatalf("the attacking process ended: %v", report.Err())
	}
	sent := report.Text()
	time.Sleep(2 * time.Second) // the daemon has handled all it accepted
	close(stop)
	<-honest
	hwm, rss := testbin.ProcStatus(t, pid, "VmHWM"), testbin.ProcStatus(t, pid, "VmRSS")
	toAttack.Close()
	if !report.Scan() { // its counts, read with its connections still open
		t.Fatalf("the attacking process ended: %v", report.Err())
	}
	counts := report.Text()
	if err := attack.Wait(); err != nil {
		t.Fatalf("the attacking process: %v", err)
	}

	slices.Sort(latencies)
	p99 := latencies[len(latencies)*99/100]
	t.Logf("%d connections x %d unread 60 KB Encrypts sent in %s: %s (headers only); "+
		"daemon RSS peak %.1f MiB, now %.1f MiB; honest client: %d calls, p99 %v, max %v, %d failed",
		attackConns, attackStreams, sent, counts, float64(hwm)/(1<<20), float64(rss)/(1<<20),
		len(latencies), p99, latencies[len(latencies)-1], len(failures))
	if len(failures) > 0 {
		t.Errorf("the honest client's calls failed: %v", failures[0])
	}
	if p99 >= 50*time.Millisecond {
		t.Errorf("honest client p99 %v, want < 50ms", p99)
	}
	if hwm >= maxRSS && !testbin.RaceEnabled {
		t.Errorf("daemon peak RSS %.1f MiB, want < %d MiB", float64(hwm)/(1<<20), maxRSS>>20)
	}
	keyStatus(t, d) // still serving
}

// Connections that only say hello hold no memory for long: the daemon
// takes a bounded number at once and closes each after the idle timeout.
func TestIdleConnectionsAreBounded(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := startDaemon(t, sock, "--command", "cat "+ring, "--idle-timeout", "1s", "--health-address", "127.0.0.1:0")
	pid := d.Cmd.Process.Pid
	metrics := healthURL(t, d)

	const n = 2000
	idle := make([]*testbin.RawH2, 0, n)
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range n {
		c, err := testbin.DialRawH2(sock, 65535)
		if err != nil {
			t.Fatalf("connection %d: %v", len(idle)+1, err)
		}
		idle = append(idle, c)
	}
	time.Sleep(500 * time.Millisecond)
	rss := testbin.ProcStatus(t, pid, "VmRSS")
	open := scrape(t, metrics).value(t, "kms_connections")
	t.Logf("%d idle connections: the daemon has %v open, RSS %.1f MiB", n, open, float64(rss)/(1<<20))
	if open != transport.MaxConnections {
		t.Errorf("kms_connections %v, want the limit, %d", open, transport.MaxConnections)
	}
	if rss >= maxRSS && !testbin.RaceEnabled {
		t.Errorf("daemon RSS %.1f MiB with %d idle connections, want < %d MiB", float64(rss)/(1<<20), n, maxRSS>>20)
	}
	// The first ones the daemon took are closed after the idle timeout.
	closed := 0
	deadline := time.Now().Add(10 * time.Second)
	for _, c := range idle[:transport.MaxConnections] {
		if c.Closed(time.Until(deadline)) {
			closed++
		}
	}
	if closed < transport.MaxConnections {
		t.Errorf("%d of the first %d idle connections closed within 10s of a 1s idle timeout", closed, transport.MaxConnections)
	}
	for _, c := range idle {
		c.Close()
	}
	idle = nil
	testbin.WaitFor(t, "the daemon to serve again", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := d.v2.Status(ctx, &v2.StatusRequest{})
		return err == nil
	})
}

// attackEnv names, for a copy of this test binary, the socket it attacks
// as TestUnreadStreamsAreBounded's hostile client (see attackUnread).
const attackEnv = "KMS_TEST_ATTACK_SOCKET"

const attackConns, attackStreams = 4, 1000

// attackUnread is that hostile client's process. It opens attackConns
// connections with a zero receive window, sends attackStreams Encrypts of
// 60 KB on each, prints how long that took, holds its connections until its
// stdin closes, then prints what the daemon refused and answered.
func attackUnread(sock string) int {
	msg, err := proto.Marshal(&v2.EncryptRequest{Plaintext: make([]byte, 60<<10), Uid: "hostile"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	attackers := make([]*testbin.RawH2, attackConns)
	for i := range attackers {
		if attackers[i], err = testbin.DialRawH2(sock, 0); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer attackers[i].Close()
	}
	began := time.Now()
	var wg sync.WaitGroup
	for _, a := range attackers {
		wg.Go(func() {
			for range attackStreams {
				if err := a.Call("/v2.KeyManagementService/Encrypt", msg); err != nil {
					fmt.Fprintf(os.Stderr, "an attacker's connection ended early: %v\n", err)
					return
				}
			}
		})
	}
	wg.Wait()
	fmt.Println(time.Since(began).Round(time.Millisecond))
	io.Copy(io.Discard, os.Stdin)
	var refused, answered int64
	for _, a := range attackers {
		refused += a.Refused.Load()
		answered += a.Answered.Load()
	}
	fmt.Printf("%d refused, %d answered\n", refused, answered)
	return 0
}
