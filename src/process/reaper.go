package process

import (
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// When kms is PID 1 in a container without an init, or a child subreaper,
// the kernel makes it the parent of every orphan of the KEK command (a
// background child it left, or the children of a run killed at the command
// timeout). Those must be reaped, or they pile up as zombies. The commands
// kms itself waits for must not be: their exit status is how a run ends,
// so they are known by pid from start to Wait.
var (
	reaping  atomic.Bool
	children = struct {
		sync.Mutex
		pids map[int]bool
	}{pids: map[int]bool{}}
)

// StartChild starts cmd and keeps the orphan reaper away from it until
// ChildDone, which the caller calls after cmd.Wait.
func StartChild(cmd *exec.Cmd) error {
	children.Lock()
	defer children.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	children.pids[cmd.Process.Pid] = true
	return nil
}

// ChildDone says cmd (started with StartChild) has been waited for.
func ChildDone(cmd *exec.Cmd) {
	children.Lock()
	delete(children.pids, cmd.Process.Pid)
	children.Unlock()
	// A zombie that waited behind cmd's in the kernel's list can go now.
	reap()
}

// ReapOrphans starts reaping orphans if this process is PID 1 or a child
// subreaper, and says whether it did.
func ReapOrphans() bool {
	var sub int32
	err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&sub)), 0, 0, 0)
	if os.Getpid() != 1 && (err != nil || sub == 0) {
		return false
	}
	reaping.Store(true)
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go func() {
		for range sigchld {
			reap()
		}
	}()
	reap()
	return true
}

// reap waits for every exited child that is not a command StartChild
// started. It looks before it takes (WNOWAIT): the kernel names one exited
// child at a time, and a started command's status is left for its Wait.
func reap() {
	if !reaping.Load() {
		return
	}
	children.Lock()
	defer children.Unlock()
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		pid := siginfoPid(&info)
		if err != nil || pid == 0 || children.pids[pid] {
			return
		}
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	}
}

// siginfoPid is si_pid, which x/sys/unix keeps in Siginfo's padding: on
// 64-bit Linux it follows si_signo, si_errno, si_code and 4 bytes of
// alignment.
func siginfoPid(info *unix.Siginfo) int {
	return int(*(*int32)(unsafe.Add(unsafe.Pointer(info), 16)))
}
