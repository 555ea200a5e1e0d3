package load

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	v2 "github.com/cmdkms/kms/proto/v2"
)

// server is one plugin under test: a process this package starts, or
// one it was given by endpoint and pid.
type server struct {
	name     string
	endpoint string
	pid      int
	// argv starts it; nil for a server that was given.
	argv []string
	// env is its environment; nil: bench's own.
	env    []string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
}

func (s *server) socket() string { return strings.TrimPrefix(s.endpoint, "unix://") }

// spawn starts the process and returns once its socket exists, before it
// necessarily serves: the start-up storm begins at that moment.
func (s *server) spawn() error {
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.cmd = exec.Command(s.argv[0], s.argv[1:]...)
	s.cmd.Env = s.env
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.pid = s.cmd.Process.Pid
	s.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { cmd.Wait(); close(exited) }(s.cmd, s.exited)
	deadline := time.After(60 * time.Second)
	for {
		if fi, err := os.Stat(s.socket()); err == nil && fi.Mode().Type() == os.ModeSocket {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("%s exited before opening its socket (%v); log:\n%s", s.name, s.cmd.ProcessState, s.logTail())
		case <-deadline:
			s.kill()
			return fmt.Errorf("%s has no socket after 60s; log:\n%s", s.name, s.logTail())
		case <-time.After(time.Millisecond):
		}
	}
}

// waitReady returns once c gets an answer from Status.
func (s *server) waitReady(c *Client) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.V2.Status(ctx, &v2.StatusRequest{}, grpc.WaitForReady(true)); err != nil {
		return fmt.Errorf("%s is not serving: %w; log:\n%s", s.name, err, s.logTail())
	}
	return nil
}

// stop ends a process this package started: SIGTERM, then SIGKILL if it
// does not finish in time.
func (s *server) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.kill()
	}
	s.cmd = nil
}

func (s *server) kill() {
	s.cmd.Process.Kill()
	<-s.exited
}

func (s *server) logTail() string {
	b, _ := os.ReadFile(s.log)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

func (s *server) proc() (Proc, error) {
	p, err := ReadProc(s.pid)
	if err != nil {
		return p, fmt.Errorf("%s: %w", s.name, err)
	}
	return p, nil
}

func newServer(name, dir string, argv []string) *server {
	sock := filepath.Join(dir, name+".sock")
	return &server{
		name:     name,
		endpoint: "unix://" + sock,
		argv:     append(argv, "--endpoint", "unix://"+sock),
		log:      filepath.Join(dir, name+".log"),
	}
}
