package backends

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const (
	tangd       = "/usr/libexec/tangd"
	tangdKeygen = "/usr/libexec/tangd-keygen"
)

// needTang skips the test when Debian's tang or clevis is missing.
func needTang(t *testing.T) {
	need(t, "tang clevis", tangd, tangdKeygen, "clevis", "clevis-encrypt-tang", "clevis-decrypt-tang")
}

// tang serves Debian's tangd on a loopback port the way inetd (or systemd's
// Accept=yes socket) does: one tangd process per connection, the
// connection on its stdin and stdout. It can be stopped and started again
// on the same port, to stage an outage.
type tang struct {
	t    *testing.T
	db   string
	addr string
	url  string
	mu   sync.Mutex
	l    net.Listener
	hung chan struct{} // while not nil, connections are held, never answered
	wg   sync.WaitGroup
}

// startTang makes a tang key database and serves it.
func startTang(t *testing.T) *tang {
	db := filepath.Join(t.TempDir(), "tang-db")
	if err := os.Mkdir(db, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, nil, nil, tangdKeygen, db)
	tg := &tang{t: t, db: db, addr: "127.0.0.1:0"}
	tg.listen(nil)
	tg.addr = tg.l.Addr().String()
	tg.url = "http://" + tg.addr
	t.Cleanup(tg.stop)
	return tg
}

// start serves again after stop.
func (tg *tang) start() { tg.listen(nil) }

// hang accepts connections and never answers them, like a server that is
// up but stuck, or one behind a firewall that drops packets, until stop.
func (tg *tang) hang() { tg.listen(make(chan struct{})) }

func (tg *tang) listen(hung chan struct{}) {
	tg.t.Helper()
	l, err := net.Listen("tcp", tg.addr)
	if err != nil {
		tg.t.Fatal(err)
	}
	tg.mu.Lock()
	tg.l, tg.hung = l, hung
	tg.mu.Unlock()
	tg.wg.Add(1)
	go func() {
		defer tg.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tg.wg.Add(1)
			go func() {
				defer tg.wg.Done()
				if hung != nil {
					<-hung
					c.Close()
					return
				}
				tg.serve(c.(*net.TCPConn))
			}()
		}
	}()
}

func (tg *tang) serve(c *net.TCPConn) {
	defer c.Close()
	f, err := c.File()
	if err != nil {
		return
	}
	defer f.Close()
	cmd := exec.Command(tangd, tg.db)
	cmd.Stdin, cmd.Stdout = f, f
	cmd.Run()
}

// stop closes the port and the connections it holds, and waits for
// requests in flight.
func (tg *tang) stop() {
	tg.mu.Lock()
	l, hung := tg.l, tg.hung
	tg.l, tg.hung = nil, nil
	tg.mu.Unlock()
	if l != nil {
		l.Close()
		if hung != nil {
			close(hung)
		}
		tg.wg.Wait()
	}
}

// The Clevis/Tang recipe (docs/backends/tang.md): a keyring bound to a tang
// server with `clevis encrypt tang`, the daemon running the drop-in's
// `clevis decrypt`, through a tang outage and a rotation.
func TestTang(t *testing.T) {
	needTang(t)
	tg := startTang(t)
	creds := t.TempDir() // what LoadCredential= gives the service (%d)
	ring, primary := newKeyring(t)
	// -y trusts the advertisement without asking: nobody is at a terminal.
	seal := func(ring []byte) {
		writeFile(t, filepath.Join(creds, "kek.jwe"), run(t, nil, ring, "clevis", "encrypt", "tang", `{"url":"`+tg.url+`"}`, "-y"))
	}
	seal(ring)
	command := dropinCommand(t, "tang.conf", creds)
	check(t, command, primary)

	// Clevis's shell scripts and EC math take seconds per run on a busy machine.
	d := startDaemon(t, command, 20*time.Second, 15*time.Second)
	d.outage(t, primary, tg.stop, tg.start)
	d.rotate(t, primary, seal)
	d.stop(t, ring)
}
