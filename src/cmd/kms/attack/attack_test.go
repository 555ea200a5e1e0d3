// Package attack measures the kms daemon under a hostile client's attack: what the
// attacker makes it hold, and how an honest client beside it is served. Its own
// package, so that Bazel can run it with nothing beside it (see BUILD.bazel).
package attack

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
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(attackEnv); sock != "" {
		os.Exit(attackUnread(sock))
	}
	os.Exit(testbin.Main(m))
}

// Four connections that each open 1000 Encrypt calls of 60 KB and never
// let the daemon send an answer (zero receive window). A fifth connection,
// as kube-apiserver's, is served quickly throughout, and the daemon's peak
// RSS stays under 64 MiB.
func TestUnreadStreamsAreBounded(t *testing.T) {
	dir := testbin.ShortDir(t)
	sock, ring := filepath.Join(dir, "kms.sock"), filepath.Join(dir, "keyring")
	testbin.WriteKeyring(t, ring, testbin.NewKey())
	d := testbin.StartKMS(t, sock, "--command", "cat "+ring)
	pid := d.Cmd.Process.Pid
	conn := testbin.Dial(t, sock)
	defer conn.Close()
	client := v2.NewKeyManagementServiceClient(conn)

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
			_, err := client.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("0123456789abcdef0123456789abcdef")})
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
	if hwm >= testbin.MaxDaemonRSS && !testbin.RaceEnabled {
		t.Errorf("daemon peak RSS %.1f MiB, want < %d MiB", float64(hwm)/(1<<20), testbin.MaxDaemonRSS>>20)
	}
	if _, err := client.Status(context.Background(), &v2.StatusRequest{}); err != nil {
		t.Errorf("Status after the attack: %v", err)
	}
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
