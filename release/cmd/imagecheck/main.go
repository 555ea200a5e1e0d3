// Command imagecheck proves a built image works the way a kubelet would run
// it: it unpacks one platform's image of the release index into a root
// filesystem, starts the entrypoint in it with chroot as 65532:65532 (no
// shell exists there, so the KEK command runs word-split), and drives the
// daemon through its socket with the KMS v2 and v1beta1 APIs. It must run
// as root (chroot, chown).
//
// An image of another architecture runs under a static qemu-user emulator
// (--emulator), which is copied into the unpacked root filesystem (never
// into the image) and put in front of the entrypoint and of the KEK
// command: without binfmt_misc, which would change the whole machine, the
// kernel cannot start a foreign binary itself, so the daemon's own exec of
// the KEK command goes through the emulator too.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	kmsv1 "github.com/cmdkms/kms/proto/v1beta1"
	kmsv2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/release/imagebuilder"
	"github.com/cmdkms/kms/src/cli"
)

const nonroot = 65532

// emulatorPath is where --emulator goes in the unpacked root filesystem.
const emulatorPath = "/.imagecheck-emulator"

type options struct {
	layout, arch, emulator, kekCommand, kekFile string
	keep                                        bool
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.Command{Name: "imagecheck", Usage: "imagecheck: run one platform's image of a release index as a kubelet would, and call the daemon\n\nFlags:\n",
		Flags: func(fs *pflag.FlagSet) func([]string) error {
			o := &options{}
			fs.StringVar(&o.layout, "layout", "", "OCI image layout holding the release image index (required)")
			fs.StringVar(&o.arch, "arch", runtime.GOARCH, "the platform linux/ARCH whose image to run")
			fs.StringVar(&o.emulator, "emulator", "", "static qemu-user binary for ARCH (e.g. Debian's qemu-aarch64-static), when ARCH is not this machine's")
			fs.StringVar(&o.kekCommand, "kek-command", "/usr/bin/kek-file /etc/kms/kek", "--command for the daemon, as it runs inside the image")
			fs.StringVar(&o.kekFile, "kek-file", "/etc/kms/kek", "where in the root filesystem to put a fresh keyring for the KEK command")
			fs.BoolVar(&o.keep, "keep", false, "keep the unpacked root filesystem")
			return func(args []string) error {
				if err := cli.NoArgs(args); err != nil {
					return err
				}
				if o.layout == "" {
					return cli.Usagef("--layout is required")
				}
				if (o.arch != runtime.GOARCH) != (o.emulator != "") {
					return cli.Usagef("--emulator is needed exactly when --arch (%s) is not this machine's (%s)", o.arch, runtime.GOARCH)
				}
				if err := check(o); err != nil {
					fmt.Fprintln(stdout, "imagecheck: FAIL:", err)
					return cli.ErrReported
				}
				fmt.Fprintln(stdout, "imagecheck: PASS")
				return nil
			}
		}}.Run(args, stdout, stderr)
}

func step(format string, args ...any) { fmt.Printf("imagecheck: "+format+"\n", args...) }

func check(o *options) error {
	idx, err := imagebuilder.ReadIndex(o.layout)
	if err != nil {
		return err
	}
	img, err := imagebuilder.PlatformImage(idx, o.arch)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	step("linux/%s image %s: user %s, entrypoint %v", cf.Architecture, digest, cf.Config.User, cf.Config.Entrypoint)
	if cf.OS != "linux" || cf.Architecture != o.arch {
		return fmt.Errorf("the index lists a %s/%s image as linux/%s", cf.OS, cf.Architecture, o.arch)
	}
	if cf.Config.User != "65532:65532" {
		return fmt.Errorf("image runs as %q, want 65532:65532", cf.Config.User)
	}
	if len(cf.Config.Entrypoint) == 0 {
		return errors.New("image has no entrypoint")
	}

	// Under /tmp, not $TMPDIR: Bazel points that at a long test directory
	// and a unix socket path must stay under 108 bytes.
	rootfs, err := os.MkdirTemp("/tmp", "kms-rootfs")
	if err != nil {
		return err
	}
	if o.keep {
		step("root filesystem kept in %s", rootfs)
	} else {
		defer os.RemoveAll(rootfs)
	}
	// The image's "/" as runtimes make it; MkdirTemp's 0700 would lock the
	// daemon's user out of its own root.
	if err := os.Chmod(rootfs, 0o755); err != nil {
		return err
	}
	if err := unpack(img, rootfs); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	if err := checkRootfs(rootfs, o.arch); err != nil {
		return err
	}
	if err := runtimeDevices(rootfs); err != nil {
		return err
	}
	// The socket directory, as the static pod mounts it from the node, where
	// kms-tmpfiles.conf makes it: 0700, owned by the daemon's user.
	const sock = "/run/kms/kms.sock"
	sockDir := filepath.Join(rootfs, filepath.Dir(sock))
	if err := os.MkdirAll(sockDir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(sockDir, 0o700); err != nil {
		return err
	}
	if err := os.Chown(sockDir, nonroot, nonroot); err != nil {
		return err
	}

	// The KEK file: a fresh text keyring, readable by the daemon's user only.
	key := make([]byte, 32)
	rand.Read(key)
	kek := filepath.Join(rootfs, o.kekFile)
	if err := os.MkdirAll(filepath.Dir(kek), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(kek, []byte("kms-keyring v1\n"+base64.StdEncoding.EncodeToString(key)+"\n"), 0o400); err != nil {
		return err
	}
	if err := os.Chown(kek, nonroot, nonroot); err != nil {
		return err
	}

	entrypoint, kekCommand := cf.Config.Entrypoint, o.kekCommand
	if o.emulator != "" {
		if err := copyEmulator(o.emulator, filepath.Join(rootfs, emulatorPath)); err != nil {
			return err
		}
		step("linux/%s under the emulator %s (copied into the unpacked root filesystem as %s)", o.arch, o.emulator, emulatorPath)
		entrypoint = append([]string{emulatorPath}, entrypoint...)
		kekCommand = emulatorPath + " " + kekCommand
	}
	args := append([]string{"--userspec=65532:65532", rootfs}, entrypoint...)
	args = append(args, cf.Config.Cmd...)
	args = append(args, "--command", kekCommand, "--endpoint", "unix://"+sock)
	chroot, err := exec.LookPath("chroot")
	if err != nil {
		// Bazel tests run with a PATH that has no sbin directories.
		chroot = "/usr/sbin/chroot"
	}
	cmd := exec.Command(chroot, args...)
	// The image's environment only, as a runtime would set it.
	cmd.Env = cf.Config.Env
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	step("running chroot %s", strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
		fmt.Printf("imagecheck: daemon output:\n%s", indent(logs.String()))
	}()

	hostSock := filepath.Join(rootfs, sock)
	if err := waitForSocket(hostSock, exited); err != nil {
		return err
	}
	if err := checkProcess(cmd.Process.Pid, hostSock); err != nil {
		return err
	}
	if err := drive(hostSock); err != nil {
		return err
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case err := <-exited:
		step("daemon stopped on SIGTERM (%v)", errOrOK(err))
	case <-time.After(15 * time.Second):
		return errors.New("daemon did not stop within 15s of SIGTERM")
	}
	return nil
}

// checkRootfs checks what a distroless base promises: no shell or package
// manager, the users and writable directories the daemon relies on, and
// binaries of the image's architecture.
func checkRootfs(rootfs, arch string) error {
	for _, p := range []string{"bin/sh", "bin/bash", "usr/bin/sh", "bin/busybox", "usr/bin/apt", "usr/bin/dpkg"} {
		if _, err := os.Lstat(filepath.Join(rootfs, p)); err == nil {
			return fmt.Errorf("image contains /%s", p)
		}
	}
	for p, want := range map[string]struct {
		mode fs.FileMode
		uid  uint32
	}{
		"tmp":          {fs.ModeDir | fs.ModeSticky | 0o777, 0},
		"home/nonroot": {fs.ModeDir | 0o700, nonroot},
		"etc/passwd":   {0o644, 0},
	} {
		st, err := os.Lstat(filepath.Join(rootfs, p))
		if err != nil {
			return err
		}
		if st.Mode() != want.mode || st.Sys().(*syscall.Stat_t).Uid != want.uid {
			return fmt.Errorf("/%s: mode %v uid %d, want %v uid %d", p, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, want.mode, want.uid)
		}
	}
	bins, err := os.ReadDir(filepath.Join(rootfs, "usr/bin"))
	if err != nil {
		return err
	}
	var names []string
	for _, b := range bins {
		data, err := os.ReadFile(filepath.Join(rootfs, "usr/bin", b.Name()))
		if err != nil {
			return err
		}
		a, err := imagebuilder.StaticArch(imagebuilder.Binary{Path: "/usr/bin/" + b.Name(), Data: data})
		if err != nil {
			return err
		}
		if a != arch {
			return fmt.Errorf("/usr/bin/%s is a %s binary in the %s image", b.Name(), a, arch)
		}
		names = append(names, b.Name())
	}
	step("rootfs ok: no shell, /tmp 1777, /home/nonroot 0700 65532; /usr/bin (static, %s): %s", arch, strings.Join(names, " "))
	return nil
}

// copyEmulator puts the emulator into the root filesystem, 0755 root, for
// the daemon's user to run.
func copyEmulator(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		return err
	}
	return os.Chmod(dst, 0o755) // whatever the umask
}

// runtimeDevices adds the device nodes every OCI runtime provides in /dev
// (the image itself has no /dev); exec.Cmd, for one, opens /dev/null.
func runtimeDevices(rootfs string) error {
	dev := filepath.Join(rootfs, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil {
		return err
	}
	for name, minor := range map[string]int{"null": 3, "zero": 5, "random": 8, "urandom": 9} {
		p := filepath.Join(dev, name)
		if err := syscall.Mknod(p, syscall.S_IFCHR|0o666, int(unix.Mkdev(1, uint32(minor)))); err != nil {
			return fmt.Errorf("mknod %s: %w", p, err)
		}
		if err := os.Chmod(p, 0o666); err != nil {
			return err
		}
	}
	return nil
}

func waitForSocket(p string, exited <-chan error) error {
	deadline := time.After(30 * time.Second)
	for {
		if st, err := os.Lstat(p); err == nil && st.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("daemon exited before creating its socket: %v", errOrOK(err))
		case <-deadline:
			return errors.New("no socket after 30s")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// checkProcess confirms the daemon runs as 65532 with no capabilities and
// owns its socket.
func checkProcess(pid int, sock string) error {
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return err
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		fields[k] = strings.Join(strings.Fields(v), " ")
	}
	if fields["Uid"] != "65532 65532 65532 65532" || fields["Gid"] != "65532 65532 65532 65532" {
		return fmt.Errorf("daemon runs with Uid %q Gid %q", fields["Uid"], fields["Gid"])
	}
	if fields["CapEff"] != "0000000000000000" {
		return fmt.Errorf("daemon has effective capabilities %s", fields["CapEff"])
	}
	st, err := os.Lstat(sock)
	if err != nil {
		return err
	}
	step("daemon pid %d runs as uid/gid 65532, no capabilities; socket %v owned by uid %d",
		pid, st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid)
	return nil
}

func drive(sock string) error {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	v2 := kmsv2.NewKeyManagementServiceClient(conn)
	st, err := v2.Status(ctx, &kmsv2.StatusRequest{})
	if err != nil {
		return fmt.Errorf("v2 Status: %w", err)
	}
	if st.Healthz != "ok" || st.KeyId == "" {
		return fmt.Errorf("v2 Status: healthz %q key_id %q", st.Healthz, st.KeyId)
	}
	plain := []byte("a data encryption key, 32 bytes!")
	enc, err := v2.Encrypt(ctx, &kmsv2.EncryptRequest{Plaintext: plain, Uid: "imagecheck-1"})
	if err != nil {
		return fmt.Errorf("v2 Encrypt: %w", err)
	}
	dec, err := v2.Decrypt(ctx, &kmsv2.DecryptRequest{Ciphertext: enc.Ciphertext, Uid: "imagecheck-2", KeyId: enc.KeyId, Annotations: enc.Annotations})
	if err != nil {
		return fmt.Errorf("v2 Decrypt: %w", err)
	}
	if !bytes.Equal(dec.Plaintext, plain) || bytes.Contains(enc.Ciphertext, plain) {
		return errors.New("v2: round trip did not give the plaintext back, or the ciphertext contains it")
	}
	step("v2: Status version %s healthz %s key_id %s; Encrypt/Decrypt round trip ok (%d-byte ciphertext)",
		st.Version, st.Healthz, st.KeyId, len(enc.Ciphertext))

	v1b := kmsv1.NewKeyManagementServiceClient(conn)
	ver, err := v1b.Version(ctx, &kmsv1.VersionRequest{Version: "v1beta1"})
	if err != nil {
		return fmt.Errorf("v1beta1 Version: %w", err)
	}
	c1, err := v1b.Encrypt(ctx, &kmsv1.EncryptRequest{Version: "v1beta1", Plain: plain})
	if err != nil {
		return fmt.Errorf("v1beta1 Encrypt: %w", err)
	}
	p1, err := v1b.Decrypt(ctx, &kmsv1.DecryptRequest{Version: "v1beta1", Cipher: c1.Cipher})
	if err != nil {
		return fmt.Errorf("v1beta1 Decrypt: %w", err)
	}
	if !bytes.Equal(p1.Plain, plain) {
		return errors.New("v1beta1: round trip did not give the plaintext back")
	}
	step("v1beta1: Version %s runtime %s %s; Encrypt/Decrypt round trip ok", ver.Version, ver.RuntimeName, ver.RuntimeVersion)
	return nil
}

func errOrOK(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + line + "\n")
	}
	return b.String()
}
