package process

import (
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"
)

// Mlock says whether to lock the daemon's memory, so that keys are never
// written to swap (--mlock).
type Mlock string

const (
	// MlockAuto locks where that is sure to last: with CAP_IPC_LOCK or an
	// unlimited RLIMIT_MEMLOCK. Under a finite limit, memory the Go runtime
	// maps later would fail once the limit is reached, and the daemon
	// would crash, so it does not lock, and says why.
	MlockAuto Mlock = "auto"
	// MlockRequired fails the start when memory cannot be locked.
	MlockRequired Mlock = "required"
	// MlockOff never locks.
	MlockOff Mlock = "off"
)

// ParseMlock reads a --mlock value.
func ParseMlock(s string) (Mlock, error) {
	switch m := Mlock(s); m {
	case MlockAuto, MlockRequired, MlockOff:
		return m, nil
	}
	return "", fmt.Errorf("%q: want auto, required or off", s)
}

// Harden protects the key material the process is about to hold: no
// other process of the same user may read its memory (/proc/PID/mem,
// ptrace) and no core file is written, and its memory is locked as m says.
func Harden(m Mlock, log *slog.Logger) error {
	// Not dumpable: /proc/PID/mem and ptrace need CAP_SYS_PTRACE, and the
	// kernel writes no core file.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", err)
	}
	// A core_pattern pipe may ignore the dumpable flag; a zero limit stops it too.
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return fmt.Errorf("setrlimit(RLIMIT_CORE, 0): %w", err)
	}
	if m == MlockOff {
		log.Info("memory not locked (--mlock off): keys may be written to swap if the node swaps")
		return nil
	}
	why := lockable()
	if why == nil {
		why = lockAll()
	}
	switch {
	case why == nil:
		log.Info("memory locked: keys are never written to swap")
	case m == MlockRequired:
		return fmt.Errorf("--mlock required: cannot lock memory: %w", why)
	default:
		log.Warn("memory not locked: keys may be written to swap if the node swaps (--mlock required makes this fatal)", "reason", why.Error())
	}
	return nil
}

// lockable says why locking all memory could fail, now or later, or nil.
func lockable() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		return err
	}
	if lim.Cur == unix.RLIM_INFINITY {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		return err
	}
	if caps[0].Effective&(1<<unix.CAP_IPC_LOCK) != 0 {
		return nil
	}
	return fmt.Errorf("no CAP_IPC_LOCK, and RLIMIT_MEMLOCK is %d bytes, not unlimited", lim.Cur)
}

// lockAll locks what is mapped now and what will be, each page as it is
// first touched (MCL_ONFAULT, Linux 4.4), so that the Go runtime's large
// reservations do not become resident all at once.
func lockAll() error {
	err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT)
	if errors.Is(err, unix.EINVAL) {
		err = unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE)
	}
	if err != nil {
		return fmt.Errorf("mlockall: %w", err)
	}
	return nil
}
