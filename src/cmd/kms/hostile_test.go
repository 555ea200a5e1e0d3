package main

// Hostile clients on the socket: what idle connections can make the daemon
// hold. The attack with unread calls, measured with nothing beside it, is
// in ./attack.

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/src/transport"
)

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
	// The daemon takes connections up to its limit and leaves the rest in the
	// listen queue: measure once it has taken all it will.
	var open float64
	testbin.WaitFor(t, "the daemon to take its connections", 30*time.Second, func() bool {
		open = scrape(t, metrics).value(t, "kms_connections")
		return open >= transport.MaxConnections
	})
	rss := testbin.ProcStatus(t, pid, "VmRSS")
	t.Logf("%d idle connections: the daemon has %v open, RSS %.1f MiB", n, open, float64(rss)/(1<<20))
	if open != transport.MaxConnections {
		t.Errorf("kms_connections %v, want the limit, %d", open, transport.MaxConnections)
	}
	if rss >= testbin.MaxDaemonRSS && !testbin.RaceEnabled {
		t.Errorf("daemon RSS %.1f MiB with %d idle connections, want < %d MiB", float64(rss)/(1<<20), n, testbin.MaxDaemonRSS>>20)
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
