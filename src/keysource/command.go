package keysource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/process"
)

const (
	// DefaultCommandTimeout bounds a run unless the operator says otherwise.
	DefaultCommandTimeout = 30 * time.Second
	// MaxOutput caps the command's stdout. A keyring of hundreds of keys
	// fits; a runaway command does not fill memory.
	MaxOutput = 64 << 10
	// maxStderr is how much of stderr is kept for the log.
	maxStderr = 2 << 10
)

// Run's errors wrap these, so callers can tell a hung or runaway command
// (e.g. for metrics) from one that failed.
var (
	ErrTimeout       = errors.New("command did not finish")
	ErrTooMuchOutput = fmt.Errorf("command printed more than %d bytes", MaxOutput)
	// ErrCancelled: the caller stopped the run (the daemon is stopping); it
	// says nothing about the command.
	ErrCancelled = errors.New("run cancelled")
)

// DefaultShell runs commands when it exists (see Argv).
const DefaultShell = "/bin/sh"

// shellSyntax lists characters whose meaning a shell supplies. Without a
// shell they would reach the program as literal arguments and fail in
// confusing ways, so Argv refuses them instead.
const shellSyntax = "<>|&;$`'\"\\*?()[]{}~#\n"

// Argv decides how command is run. If shell exists and is executable the
// command goes to `shell -c`, so redirections and pipes work (`clevis
// decrypt < kek.jwe`). Otherwise (a distroless image has no shell) it is
// split on white space and executed directly; shell syntax is then an error.
func Argv(shell, command string) ([]string, error) {
	if strings.TrimSpace(command) == "" {
		return nil, errors.New("empty command")
	}
	if fi, err := os.Stat(shell); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return []string{shell, "-c", command}, nil
	}
	if i := strings.IndexAny(command, shellSyntax); i >= 0 {
		return nil, fmt.Errorf("%s does not exist, so the command runs without a shell, "+
			"but it uses shell syntax (%q at offset %d); use a plain `program arg ...` command", shell, command[i], i)
	}
	return strings.Fields(command), nil
}

// Fetched is what one successful run of the command gave.
type Fetched struct {
	// Keys are ready to use, primary first. The key bytes the command
	// printed are already wiped: each cipher keeps its own key schedule.
	Keys []*codec.Key
	// Raw is true for the 2018 raw format.
	Raw bool
	// Stderr is what the command wrote to stderr, cut for a log line.
	Stderr string
}

// Fetch runs argv once and turns what it prints into keys: what the daemon
// does at start and at every refresh, and what `kms check` does.
func Fetch(ctx context.Context, argv []string, timeout time.Duration) (*Fetched, error) {
	out, stderr, err := Run(ctx, argv, timeout)
	if err != nil {
		return nil, err
	}
	ring, err := kek.Parse(out)
	clear(out)
	if err != nil {
		return nil, &outputError{err}
	}
	defer ring.Wipe()
	f := &Fetched{Keys: make([]*codec.Key, 0, len(ring.Keys)), Raw: ring.Raw, Stderr: stderr}
	for _, k := range ring.Keys {
		ck, err := codec.NewKey(k)
		if err != nil {
			for _, k := range f.Keys {
				k.Wipe()
			}
			return nil, &outputError{err}
		}
		f.Keys = append(f.Keys, ck)
	}
	return f, nil
}

// outputError marks a run that succeeded but printed no usable KEK.
type outputError struct{ error }

func (e *outputError) Unwrap() error { return e.error }

// outcome classifies what Fetch returned, for metrics.
func outcome(err error) Outcome {
	switch {
	case err == nil:
		return OutcomeSuccess
	case errors.Is(err, ErrTimeout):
		return OutcomeTimeout
	case errors.Is(err, ErrTooMuchOutput), errors.As(err, new(*outputError)):
		return OutcomeInvalidOutput
	}
	return OutcomeFailed
}

// Run executes argv with a bounded lifetime and returns its stdout.
// stdout goes into one preallocated buffer (no growth, so no stray copies
// of key bytes are left for the garbage collector); the caller wipes it.
// stderr comes back truncated, for the log; on error it is also part of the
// message. stdout never is.
//
// The run is over when the command's main process has exited: what it left
// in its process group is killed then, and output is read for OutputGrace
// more, in case a child that left the group (setsid) still writes; such a
// child may keep the pipes open for ever, so reading stops there. When ctx
// ends the run is killed and Run returns at once, with ErrCancelled.
func Run(ctx context.Context, argv []string, timeout time.Duration) (stdout []byte, stderr string, err error) {
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	defer outR.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		outW.Close()
		return nil, "", err
	}
	defer errR.Close()
	cmd := exec.CommandContext(runCtx, argv[0], argv[1:]...)
	// Both pipes are ours rather than exec's, so that their reads can be
	// cut off (below) whoever else holds them open.
	cmd.Stdout, cmd.Stderr = outW, errW
	// Own process group, so a timeout kills whatever the command spawned
	// (a shell's children would otherwise keep running, and keep the pipe open).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err = process.StartChild(cmd)
	outW.Close()
	errW.Close()
	if err != nil {
		if ctx.Err() != nil { // exec does not start a command for a done ctx
			return nil, "", fmt.Errorf("%w: %w", ErrCancelled, context.Cause(ctx))
		}
		return nil, "", fmt.Errorf("start %s: %w", argv[0], err)
	}
	exited := killStraysOnExit(cmd.Process.Pid)
	finished := make(chan struct{})
	defer close(finished)
	go cutReads(runCtx, exited, finished, outR, errR)

	var errOut capWriter
	stderrRead := make(chan struct{})
	go func() {
		io.Copy(&errOut, errR)
		close(stderrRead)
	}()
	buf := make([]byte, MaxOutput+1)
	n, readErr := io.ReadFull(outR, buf)
	if readErr == nil {
		// More than MaxOutput: kill now rather than wait for the timeout.
		cancel()
	}
	<-exited
	waitErr := cmd.Wait()
	process.ChildDone(cmd)
	<-stderrRead
	stderr = errOut.String()
	fail := func(err error) ([]byte, string, error) {
		clear(buf)
		if stderr != "" {
			err = fmt.Errorf("%w; stderr: %s", err, stderr)
		}
		return nil, stderr, err
	}
	switch {
	case ctx.Err() != nil:
		return fail(fmt.Errorf("%w: %w", ErrCancelled, context.Cause(ctx)))
	case readErr == nil:
		return fail(ErrTooMuchOutput)
	case errors.Is(runCtx.Err(), context.DeadlineExceeded):
		return fail(fmt.Errorf("%w within %v; killed its process group", ErrTimeout, timeout))
	case waitErr != nil:
		return fail(waitErr)
	case !errors.Is(readErr, io.ErrUnexpectedEOF) && !errors.Is(readErr, io.EOF) && !errors.Is(readErr, os.ErrDeadlineExceeded):
		return fail(fmt.Errorf("reading the command's output: %w", readErr))
	}
	return buf[:n], stderr, nil
}

// OutputGrace is how long output is still read after the command has
// exited. What the command itself wrote is in the pipe by then and is read
// in far less; the grace is for a child that left the process group and
// has not quite finished writing, and it is short because such a child may
// hold the pipe for ever, and each run of the daemon waits for it.
const OutputGrace = 500 * time.Millisecond

// cutReads ends the reads of a run's pipes: OutputGrace after the command
// exited, at once when ctx ends (a timeout, or the daemon stopping). It
// returns when the run is finished.
func cutReads(ctx context.Context, exited, finished <-chan struct{}, pipes ...*os.File) {
	cut := func(at time.Time) {
		for _, p := range pipes {
			p.SetReadDeadline(at)
		}
	}
	select {
	case <-exited:
		cut(time.Now().Add(OutputGrace))
	case <-ctx.Done():
		cut(time.Now())
		return
	case <-finished:
		return
	}
	select {
	case <-ctx.Done():
		cut(time.Now())
	case <-finished:
	}
}

// killStraysOnExit kills the process group of the command pid once the
// command has exited, and closes the channel it returns when it has. What
// the command left running in its group would otherwise hold stdout or
// stderr open and turn a successful run into a failure: Clevis's sss pin,
// for one, exits once enough of its pins answered and leaves a tang pin's
// curl waiting on a hung server. The command stays a zombie until Wait (the
// orphan reaper leaves it alone too), so its pid, the group's id, cannot
// be reused before the kill.
func killStraysOnExit(pid int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var info unix.Siginfo
		for unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
		}
		syscall.Kill(-pid, syscall.SIGKILL)
	}()
	return done
}

// capWriter keeps the first maxStderr bytes and counts the rest.
type capWriter struct {
	buf     []byte
	dropped int
}

func (w *capWriter) Write(p []byte) (int, error) {
	keep := min(len(p), maxStderr-len(w.buf))
	w.buf = append(w.buf, p[:keep]...)
	w.dropped += len(p) - keep
	return len(p), nil
}

// String returns stderr fit for one log field: trimmed, valid UTF-8.
func (w *capWriter) String() string {
	s := strings.ToValidUTF8(strings.TrimSpace(string(w.buf)), string(utf8.RuneError))
	if w.dropped > 0 {
		s += fmt.Sprintf(" ... (%d more bytes)", w.dropped)
	}
	return s
}
