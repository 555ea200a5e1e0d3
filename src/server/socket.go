package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxSocketPath is sun_path's size on Linux less the terminating NUL.
const maxSocketPath = 107

// Listen opens the socket named by endpoint ("unix:///abs/path"), or, when
// endpoint is empty, takes the one systemd passed (LISTEN_FDS/LISTEN_PID).
// mode applies to a socket this process creates. The listener removes the
// socket file when closed, except systemd's, which systemd owns.
func Listen(endpoint string, mode os.FileMode, log *slog.Logger) (net.Listener, error) {
	if endpoint == "" {
		return systemdListener()
	}
	path, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok || !filepath.IsAbs(path) {
		return nil, fmt.Errorf("endpoint %q: want unix:///absolute/path", endpoint)
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("socket path is %d bytes; unix sockets allow at most %d", len(path), maxSocketPath)
	}
	// Creating the directory would hide a typo or a missing mount.
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("socket directory %s does not exist (it is not created for you)", filepath.Dir(path))
	}
	if err := removeStale(path, log); err != nil {
		return nil, err
	}
	// The umask makes the socket private from its first moment; the chmod
	// then sets exactly mode, which the umask may have narrowed.
	old := syscall.Umask(0o777 &^ int(mode.Perm()))
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode.Perm()); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// removeStale deletes a socket file nobody listens on (left by a process
// that died) and refuses to touch a live socket or any other kind of file.
func removeStale(path string, log *slog.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("another process is listening on %s; is a kms daemon already running?", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("cannot tell whether %s is in use: %w", path, err)
	}
	log.Info("removing stale socket left by a process that is gone", "path", path)
	return os.Remove(path)
}

// systemdListener implements the socket activation protocol (sd_listen_fds):
// the first passed descriptor is 3.
func systemdListener() (net.Listener, error) {
	fds, pid := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID")
	if fds == "" {
		return nil, errors.New("no --endpoint given and no socket from systemd (LISTEN_FDS is not set)")
	}
	if pid != strconv.Itoa(os.Getpid()) {
		return nil, fmt.Errorf("LISTEN_PID=%s is not this process (%d); the socket was meant for another one", pid, os.Getpid())
	}
	if fds != "1" {
		return nil, fmt.Errorf("systemd passed LISTEN_FDS=%s sockets; want exactly 1", fds)
	}
	// Not for the KEK command and its children.
	for _, v := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		os.Unsetenv(v)
	}
	f := os.NewFile(3, "systemd socket")
	l, err := net.FileListener(f)
	f.Close() // FileListener holds its own duplicate
	if err != nil {
		return nil, fmt.Errorf("systemd socket: %w", err)
	}
	if _, ok := l.(*net.UnixListener); !ok {
		l.Close()
		return nil, fmt.Errorf("systemd passed a %s socket; want a unix socket", l.Addr().Network())
	}
	return l, nil
}
