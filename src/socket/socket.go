// Package socket opens the daemon's unix socket: one it creates
// (--endpoint), or the one systemd passes (socket activation).
package socket

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxSocketPath is sun_path's size on Linux less the terminating NUL.
const maxSocketPath = 107

// Listen opens the socket named by endpoint ("unix:///abs/path"), or, when
// endpoint is empty, takes the one systemd passed (LISTEN_FDS/LISTEN_PID).
// mode applies to a socket this process creates (see CheckMode). Closing
// the listener removes the socket file it created, if that file is still
// there; systemd's socket is systemd's to remove.
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
	if err := CheckMode(mode); err != nil {
		return nil, err
	}
	// Creating the directory would hide a typo or a missing mount.
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	if err != nil || !di.IsDir() {
		return nil, fmt.Errorf("socket directory %s does not exist (it is not created for you)", dir)
	}
	if err := removeStale(path, log); err != nil {
		return nil, err
	}
	// The umask makes the socket private from its first moment; the chmod
	// then sets exactly mode, which the umask may have narrowed.
	old := syscall.Umask(0o777 &^ int(mode.Perm()))
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	// Go would unlink whatever is at path on Close; Close below checks
	// first that it is still this socket.
	ul.SetUnlinkOnClose(false)
	l := &listener{UnixListener: ul, path: path, log: log}
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		ul.Close()
		return nil, err
	}
	l.dev, l.ino = st.Dev, st.Ino
	if err := os.Chmod(path, mode.Perm()); err != nil {
		l.Close()
		return nil, err
	}
	warnIfShared(dir, di, log)
	return l, nil
}

// CheckMode accepts socket permissions that let the owner (and, if asked
// for, the group) connect, and nobody else: a KMS socket open to every
// local user lets any of them decrypt every Secret's DEK.
func CheckMode(mode os.FileMode) error {
	switch {
	case mode&^0o777 != 0:
		return fmt.Errorf("socket mode %#o: only permission bits (0777) are allowed", uint32(mode))
	case mode&0o007 != 0:
		return fmt.Errorf("socket mode %#o gives other users access to the KMS socket; use 0600, or 0660 and a group", uint32(mode))
	case mode&0o700 != 0o600:
		return fmt.Errorf("socket mode %#o: the owner needs read and write (and nothing else), as in 0600", uint32(mode))
	case mode&0o070 != 0 && mode&0o070 != 0o060:
		return fmt.Errorf("socket mode %#o: a group needs read and write (0660) or nothing (0600)", uint32(mode))
	}
	return nil
}

// warnIfShared warns when users other than root and this one can write
// to the socket's directory: any of them could take the path before kms
// starts, and kube-apiserver would then talk to them.
func warnIfShared(dir string, fi os.FileInfo, log *slog.Logger) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	others := fi.Mode().Perm()&0o022 != 0
	owner := ok && st.Uid != 0 && int(st.Uid) != os.Geteuid()
	if others || owner {
		log.Warn("the socket's directory can be written by other users, who could take the socket's path "+
			"before kms starts (kube-apiserver would then send them its keys); use a directory only root "+
			"or kms's own user can write, such as /run/kms", "dir", dir, "mode", fi.Mode().String())
	}
}

// listener is a socket kms created, identified by its inode so that
// closing it never removes a file someone else has put at its path.
type listener struct {
	*net.UnixListener
	path     string
	dev, ino uint64
	log      *slog.Logger
	once     sync.Once
}

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		var st syscall.Stat_t
		switch lerr := syscall.Lstat(l.path, &st); {
		case errors.Is(lerr, syscall.ENOENT):
		case lerr == nil && st.Dev == l.dev && st.Ino == l.ino:
			if rerr := os.Remove(l.path); rerr != nil {
				l.log.Warn("could not remove the socket", "path", l.path, "err", rerr)
			}
		default:
			l.log.Warn("the socket's path holds another file now (replaced by someone else); leaving it in place", "path", l.path)
		}
	})
	return err
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
