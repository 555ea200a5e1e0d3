// Package kekfile reads and writes KEK files for the kek-gen and kek-file
// helpers: bounded reads that check the opened file itself, atomic 0600
// writes, and a lock that serializes edits.
package kekfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// MaxSize is the largest KEK file: the daemon caps its command's output at
// the same size (keysource.MaxOutput; a test keeps the two equal, and this
// package does not import the daemon's so the helpers stay small).
const MaxSize = 64 << 10

// File is a KEK file's contents and what fstat said about it.
type File struct {
	Data []byte
	Mode os.FileMode
	Uid  uint32
	Gid  uint32
}

// Read returns the contents of the regular file at path (symlinks are
// followed). Mode and owner come from the open file, not the path, so they
// describe the bytes that were read even if the path is swapped meanwhile.
// The caller wipes Data.
func Read(path string) (*File, error) {
	// O_NONBLOCK: opening a FIFO would otherwise wait for a writer
	// forever; it does nothing to regular files.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	buf := make([]byte, MaxSize+1)
	n, err := io.ReadFull(f, buf)
	switch {
	case err == nil:
		clear(buf)
		return nil, fmt.Errorf("%s is larger than %d bytes, the most a KEK command may print", path, MaxSize)
	case err != io.ErrUnexpectedEOF && err != io.EOF:
		clear(buf)
		return nil, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return &File{Data: buf[:n], Mode: fi.Mode(), Uid: st.Uid, Gid: st.Gid}, nil
}

// Write puts data at path: a 0600 temp file in the same directory (so the
// last step cannot cross file systems) is synced, then renamed over path,
// or, unless replace, hard-linked to it, which fails with fs.ErrExist if
// path exists, even if it appeared a moment ago. The directory is synced
// last so the new name survives a crash. With owner set (the file being
// replaced), the new file keeps its uid and gid, so a keyring that root
// rotates stays readable by the daemon's user.
func Write(path string, data []byte, owner *File, replace bool) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp makes 0600 files already; the chmod states the promise
	// here rather than rely on that.
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if owner != nil && (int(owner.Uid) != os.Geteuid() || int(owner.Gid) != os.Getegid()) {
		if err := tmp.Chown(int(owner.Uid), int(owner.Gid)); err != nil {
			return fmt.Errorf("cannot keep the owner %d:%d of %s: %w", owner.Uid, owner.Gid, path, err)
		}
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if replace {
		err = os.Rename(tmp.Name(), path)
	} else if err = os.Link(tmp.Name(), path); err == nil {
		os.Remove(tmp.Name())
	}
	if err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Lock waits for, and takes, the exclusive right to edit the KEK file at
// path, and returns its release. Without it, editors that run at once
// (kek-gen --add-secondary on one keyring from several shells or
// automation) each read the same keyring and the last rename wins: the
// other edits are lost, and with them keys that data may already use.
//
// The lock is flock(2) on a file beside it, .NAME.lock, not on the KEK file
// itself: Write replaces that by rename, so a lock on it would be on an
// inode that is no longer the file, and an editor that opens the new file
// would not wait for the holder of the old one. The lock file is left in
// place: removing it would let two editors lock two different inodes.
func Lock(path string) (unlock func(), err error) {
	name := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".lock")
	f, err := os.OpenFile(name, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cannot lock %s for editing: %w", path, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot lock %s for editing: flock %s: %w", path, name, err)
	}
	return func() { f.Close() }, nil
}
