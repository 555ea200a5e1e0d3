package backends

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmdkms/kms/src/testbin"
)

// tpm2Policy binds a secret to PCR 7 (Secure Boot state) in the SHA-256
// bank: the policy docs/backends/tpm2.md uses.
const tpm2Policy = `{"pcr_bank":"sha256","pcr_ids":"7"}`

// needTPM skips the test when the software TPM, tpm2-tools or Clevis's tpm2
// pin is missing.
func needTPM(t *testing.T) {
	need(t, "swtpm swtpm-tools tpm2-tools clevis clevis-tpm2 util-linux",
		"swtpm", "tpm2_pcrextend", "tpm2_createprimary", "tpm2_flushcontext", "flock",
		"clevis", "clevis-encrypt-tpm2", "clevis-decrypt-tpm2")
}

// tpm2Pins are Clevis's programs that load objects into the TPM.
var tpm2Pins = []string{"clevis-encrypt-tpm2", "clevis-decrypt-tpm2"}

// swtpm is a software TPM 2.0 on loopback. tpm2-tools (and so Clevis) reach
// it with TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=P, which also uses P+1
// for swtpm's control channel. Its clients find Clevis's tpm2 pins in the
// directory pins, first on their PATH (see writePins).
type swtpm struct {
	t     *testing.T
	state string
	port  int
	tcti  string
	pins  string
	cmd   *exec.Cmd
	log   testbin.Buffer
}

func startSWTPM(t *testing.T) *swtpm {
	s := &swtpm{t: t, state: t.TempDir(), port: freePortPair(t)}
	s.tcti = fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", s.port)
	s.writePins()
	s.boot()
	t.Cleanup(s.halt)
	return s
}

// freePortPair finds a port P on 127.0.0.1 such that P and P+1 are free.
func freePortPair(t *testing.T) int {
	for tries := 0; tries < 20; tries++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+1))
		l.Close()
		if err == nil {
			l2.Close()
			return port
		}
	}
	t.Fatal("no two adjacent free ports on 127.0.0.1")
	return 0
}

// boot starts the TPM: PCRs start at zero, and its seeds (in the state
// directory) are what they were, as on a real node after a reboot.
func (s *swtpm) boot() {
	s.t.Helper()
	s.cmd = exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+s.state,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.port+1),
		"--flags", "not-need-init,startup-clear")
	s.cmd.Stdout, s.cmd.Stderr = &s.log, &s.log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	testbin.WaitFor(s.t, "swtpm to answer", 10*time.Second, func() bool {
		_, _, err := try(s.env(), nil, "tpm2_pcrread", "sha256:7")
		return err == nil
	})
}

func (s *swtpm) halt() {
	if s.cmd != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// reboot power-cycles the TPM.
func (s *swtpm) reboot() {
	s.halt()
	s.boot()
}

// writePins stands in for the resource manager swtpm lacks. On a node,
// Clevis uses /dev/tpmrm0: each client sees only its own transient objects
// and sessions, and the kernel flushes them when the client exits, however
// it exits. On swtpm all clients share three object slots, and the tpm2
// pins' own `tpm2_flushcontext -t` flushes every client's objects. So a
// test's `clevis encrypt` beside a daemon's `clevis decrypt` fails ("out of
// memory for object contexts", or its objects flushed under it), and a pin
// killed in flight (by kms's --command-timeout, or by Clevis's sss pin once
// other pins gave it enough shares) leaves its objects loaded. Each pin in
// s.pins runs the real one alone on this TPM, under a lock that any process
// it leaves behind keeps holding, after flushing what an earlier one left.
// The test's clevis and the daemon's, which run the drop-ins' commands
// unchanged, both find them on PATH (env). A pin waits a minute at most: a
// lock never released fails it with flock's message instead of hanging the
// test.
func (s *swtpm) writePins() {
	dir := s.t.TempDir()
	s.pins = filepath.Join(dir, "bin")
	if err := os.Mkdir(s.pins, 0o700); err != nil {
		s.t.Fatal(err)
	}
	for _, pin := range tpm2Pins {
		target, err := exec.LookPath(pin)
		if err != nil {
			s.t.Fatal(err)
		}
		script := fmt.Sprintf(`#!/bin/sh
exec flock -w 60 '%s' sh -c 'tpm2_flushcontext --transient-object && tpm2_flushcontext --loaded-session && exec "$0" "$@"' '%s' "$@"
`, filepath.Join(dir, "lock"), target)
		if err := os.WriteFile(filepath.Join(s.pins, pin), []byte(script), 0o700); err != nil {
			s.t.Fatal(err)
		}
	}
}

// env points tpm2-tools and Clevis at this TPM, through its pins.
func (s *swtpm) env() []string {
	return []string{"TPM2TOOLS_TCTI=" + s.tcti, "PATH=" + s.path()}
}

// path is PATH with the TPM's pins first.
func (s *swtpm) path() string { return s.pins + string(os.PathListSeparator) + os.Getenv("PATH") }

// use makes this TPM the one the test's tools and its daemon use, as on a
// node they find /dev/tpmrm0 by themselves.
func (s *swtpm) use() {
	s.t.Setenv("TPM2TOOLS_TCTI", s.tcti)
	s.t.Setenv("PATH", s.path())
}

// changePCR7 extends PCR 7, as booting with another Secure Boot state would.
func (s *swtpm) changePCR7() {
	run(s.t, s.env(), nil, "tpm2_pcrextend", "7:sha256="+strings.Repeat("5a", 32))
}

// The TPM 2.0 recipe (docs/backends/tpm2.md): a keyring sealed to the TPM
// with `clevis encrypt tpm2` under a PCR 7 policy, the daemon running the
// drop-in's `clevis decrypt`. A changed PCR 7 is the outage; a reboot with
// PCR 7 as it was sealed ends it.
func TestTPM2(t *testing.T) {
	needTPM(t)
	tpm := startSWTPM(t)
	tpm.use()
	creds := t.TempDir()
	ring, primary := newKeyring(t)
	seal := func(ring []byte) {
		writeFile(t, filepath.Join(creds, "kek.jwe"), run(t, nil, ring, "clevis", "encrypt", "tpm2", tpm2Policy))
	}
	seal(ring)
	command := dropinCommand(t, "tpm2.conf", creds)
	check(t, command, primary)

	d := startDaemon(t, command, 10*time.Second, 7*time.Second)
	d.outage(t, primary, tpm.changePCR7, tpm.reboot)
	d.rotate(t, primary, seal)
	d.stop(t, ring)

	// Another TPM (a stolen disk in another machine) cannot unseal it.
	other := startSWTPM(t)
	out := fails(t, other.env(), nil, "/bin/sh", "-c", command)
	t.Logf("the sealed keyring on another TPM: %s", out)
}
