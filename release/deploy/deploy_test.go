// Package deploy holds the deployment manifests; this test checks them with
// kube-apiserver's own EncryptionConfiguration decoding and validation,
// checks that the static pod keeps its least-privilege settings, and that
// the pod, the configurations, the systemd socket unit and the tmpfiles.d
// snippet all use one socket, whose directory survives a reboot.
package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/apis/apiserver/install"
	"k8s.io/apiserver/pkg/apis/apiserver/validation"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// The one socket path of every deployment: static pod, systemd units and the
// EncryptionConfigurations kube-apiserver reads.
const socket = "/run/kms/kms.sock"

// The user the image runs as.
const nonroot = 65532

func TestEncryptionConfigurations(t *testing.T) {
	scheme := runtime.NewScheme()
	install.Install(scheme)
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDecoder()
	for file, apiVersion := range map[string]string{
		"encryption-config-v2.yaml": "v2",
		"encryption-config-v1.yaml": "v1",
	} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := decoder.Decode(b, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		c, ok := obj.(*apiserver.EncryptionConfiguration)
		if !ok {
			t.Fatalf("%s: decoded a %T", file, obj)
		}
		if errs := validation.ValidateEncryptionConfiguration(c, false); len(errs) > 0 {
			t.Errorf("%s: %v", file, errs.ToAggregate())
		}
		kms := c.Resources[0].Providers[0].KMS
		if kms == nil || kms.APIVersion != apiVersion || kms.Endpoint != "unix://"+socket {
			t.Errorf("%s: first provider %+v, want KMS %s at unix://%s", file, kms, apiVersion, socket)
		}
	}
}

// pod is the part of a Pod this test looks at.
type pod struct {
	Spec struct {
		HostNetwork     bool `json:"hostNetwork"`
		SecurityContext struct {
			RunAsNonRoot   bool `json:"runAsNonRoot"`
			RunAsUser      int  `json:"runAsUser"`
			RunAsGroup     int  `json:"runAsGroup"`
			SeccompProfile struct {
				Type string `json:"type"`
			} `json:"seccompProfile"`
		} `json:"securityContext"`
		Containers []struct {
			Image           string   `json:"image"`
			Args            []string `json:"args"`
			SecurityContext struct {
				AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
				ReadOnlyRootFilesystem   bool  `json:"readOnlyRootFilesystem"`
				Capabilities             struct {
					Drop []string `json:"drop"`
					Add  []string `json:"add"`
				} `json:"capabilities"`
			} `json:"securityContext"`
			VolumeMounts []struct {
				Name      string `json:"name"`
				MountPath string `json:"mountPath"`
				ReadOnly  bool   `json:"readOnly"`
			} `json:"volumeMounts"`
		} `json:"containers"`
		Volumes []struct {
			Name     string `json:"name"`
			HostPath struct {
				Path string `json:"path"`
				Type string `json:"type"`
			} `json:"hostPath"`
		} `json:"volumes"`
	} `json:"spec"`
}

func TestStaticPod(t *testing.T) {
	p := readPod(t)
	sc := p.Spec.SecurityContext
	if !sc.RunAsNonRoot || sc.RunAsUser != nonroot || sc.RunAsGroup != nonroot || sc.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("pod securityContext %+v", sc)
	}
	if len(p.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(p.Spec.Containers))
	}
	c := p.Spec.Containers[0]
	csc := c.SecurityContext
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation || !csc.ReadOnlyRootFilesystem ||
		!slices.Equal(csc.Capabilities.Drop, []string{"ALL"}) || len(csc.Capabilities.Add) > 0 {
		t.Errorf("container securityContext %+v", csc)
	}
	if !strings.Contains(c.Image, "@sha256:") {
		t.Errorf("image %q is not pinned by digest", c.Image)
	}
	if !slices.Contains(c.Args, "--endpoint=unix://"+socket) {
		t.Errorf("args %v do not serve %s", c.Args, socket)
	}
	// The socket directory the pod mounts is the host directory kube-apiserver
	// shares, and one that must exist: the kubelet would make a missing one
	// root-owned (DirectoryOrCreate), where 65532 cannot make its socket.
	hostPaths := map[string]string{}
	hostTypes := map[string]string{}
	for _, v := range p.Spec.Volumes {
		hostPaths[v.Name] = v.HostPath.Path
		hostTypes[v.Name] = v.HostPath.Type
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.MountPath == path.Dir(socket) {
			mounted = true
			if hostPaths[m.Name] != path.Dir(socket) || hostTypes[m.Name] != "Directory" {
				t.Errorf("socket directory comes from host %q (type %q), want %s (Directory)", hostPaths[m.Name], hostTypes[m.Name], path.Dir(socket))
			}
		}
		if m.MountPath == "/etc/kms" && !m.ReadOnly {
			t.Error("the KEK directory is mounted writable")
		}
	}
	if !mounted {
		t.Errorf("the pod does not mount %s", path.Dir(socket))
	}
}

// The systemd socket unit listens where the configurations point.
func TestSystemdSocketPath(t *testing.T) {
	b, err := os.ReadFile("systemd/kms.socket")
	if err != nil {
		t.Fatal(err)
	}
	var listen []string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ListenStream="); ok {
			listen = append(listen, v)
		}
	}
	if !slices.Equal(listen, []string{socket}) {
		t.Errorf("kms.socket listens on %v, want %s", listen, socket)
	}
}

// tmpfilesLine is the snippet's one directive, split into its fields.
func tmpfilesLine(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("kms-tmpfiles.conf")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, strings.Fields(l))
		}
	}
	if len(lines) != 1 {
		t.Fatalf("kms-tmpfiles.conf has %d directives, want 1", len(lines))
	}
	return lines[0]
}

// The snippet makes the pod's socket directory, owned by the pod's user.
func TestTmpfilesSnippet(t *testing.T) {
	want := []string{"d", path.Dir(socket), "0700", fmt.Sprint(nonroot), fmt.Sprint(nonroot), "-"}
	if got := tmpfilesLine(t); !slices.Equal(got, want) {
		t.Errorf("kms-tmpfiles.conf: %q, want %q", got, want)
	}
}

// After a reboot /run is empty. systemd-tmpfiles, from the snippet, makes
// the socket directory again, and the daemon, as the pod's user and with
// the pod's arguments, serves there; in the directory the kubelet would make
// instead (root 0755) it cannot.
func TestSocketDirectoryAfterReboot(t *testing.T) {
	tmpfiles, err := exec.LookPath("systemd-tmpfiles")
	if err != nil {
		t.Skip("systemd-tmpfiles is not installed (Debian package systemd)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the daemon runs as 65532 here: run as root")
	}
	// Under /tmp, not $TMPDIR: 65532 must reach it, and a socket path must
	// stay under 108 bytes.
	root, err := os.MkdirTemp("/tmp", "kms-boot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// The daemon and its KEK where 65532 can read them.
	kms := filepath.Join(root, "kms")
	b, err := os.ReadFile(testbin.KMS(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kms, b, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(kms, 0o755)
	kek := filepath.Join(root, "kek")
	testbin.WriteKeyring(t, kek, testbin.NewKey())
	if err := os.Chown(kek, nonroot, nonroot); err != nil {
		t.Fatal(err)
	}
	args := podArgs(t)

	// The kubelet's DirectoryOrCreate: root-owned 0755.
	kubeletDir := filepath.Join(root, "kubelet")
	if err := os.Mkdir(kubeletDir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, code := runAsPod(t, kms, kek, filepath.Join(kubeletDir, "kms.sock"), args)
	if code == 0 || !strings.Contains(out, "permission denied") {
		t.Fatalf("in a root-owned directory the daemon exited %d:\n%s", code, out)
	}

	// Installed as the node's /etc/tmpfiles.d/kms.conf, applied as at boot.
	conf, err := os.ReadFile("kms-tmpfiles.conf")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/tmpfiles.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/tmpfiles.d/kms.conf"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(tmpfiles, "--create", "--boot", "--root="+root).CombinedOutput(); err != nil {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, out)
	}
	dir := filepath.Join(root, path.Dir(socket))
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); st.Mode() != os.ModeDir|0o700 || sys.Uid != nonroot || sys.Gid != nonroot {
		t.Fatalf("%s: %v %d:%d, want drwx------ 65532:65532", dir, st.Mode(), sys.Uid, sys.Gid)
	}
	sock := filepath.Join(dir, path.Base(socket))
	d := testbin.Start(t, podCommand(kms, kek, sock, args), "serving KMS")
	conn := testbin.Dial(t, sock)
	defer conn.Close()
	client := v2.NewKeyManagementServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	enc, err := client.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("dek"), Uid: "1"})
	if err != nil {
		t.Fatalf("Encrypt: %v\n%s", err, d.Stderr())
	}
	dec, err := client.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "2"})
	if err != nil || string(dec.Plaintext) != "dek" {
		t.Fatalf("Decrypt: %v", err)
	}
	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Stderr())
	}
}

// readPod reads the static pod's manifest.
func readPod(t *testing.T) pod {
	t.Helper()
	b, err := os.ReadFile("kms-static-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.ToJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	var p pod
	if err := json.Unmarshal(j, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// podArgs are the static pod's daemon arguments but --command and
// --endpoint, which the test sets.
func podArgs(t *testing.T) []string {
	p := readPod(t)
	var args []string
	for _, a := range p.Spec.Containers[0].Args {
		if !strings.HasPrefix(a, "--command=") && !strings.HasPrefix(a, "--endpoint=") {
			args = append(args, a)
		}
	}
	return args
}

// nonRootArgs are the manifest's arguments as docs/airgap.md has them
// changed for an API server of uid: --allow-uid names that uid, not root.
func nonRootArgs(t *testing.T, uid int) []string {
	t.Helper()
	args := podArgs(t)
	for i, a := range args {
		if a == "--allow-uid=0" {
			args[i] = "--allow-uid=" + strconv.Itoa(uid)
			return args
		}
	}
	t.Fatalf("the manifest has no --allow-uid=0 to change: %q", args)
	return nil
}

// podCommand runs the daemon as the pod's user, with no capabilities.
func podCommand(kms, kek, sock string, args []string) *exec.Cmd {
	cmd := exec.Command(kms, append(args, "--command=cat "+kek, "--endpoint=unix://"+sock)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nonroot, Gid: nonroot, Groups: []uint32{}}}
	return cmd
}

func runAsPod(t *testing.T, kms, kek, sock string, args []string) (string, int) {
	out, err := podCommand(kms, kek, sock, args).CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatal(err)
	}
	return string(out), 0
}

// The snippet's variant for a kube-apiserver that does not run as root: with
// it, the daemon's socket mode 0660 and the API server in the pod's group, a
// client running as another user reaches the daemon; with the default line it
// cannot, whatever the socket's mode.
func TestNonRootAPIServer(t *testing.T) {
	tmpfiles, err := exec.LookPath("systemd-tmpfiles")
	if err != nil {
		t.Skip("systemd-tmpfiles is not installed (Debian package systemd)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the daemon runs as 65532 and the client as 1000 here: run as root")
	}
	conf, err := os.ReadFile("kms-tmpfiles.conf")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^#\s+(d /run/kms 0750 .*)$`).FindSubmatch(conf)
	if m == nil {
		t.Fatal("kms-tmpfiles.conf has no commented 0750 variant for a non-root API server")
	}
	const apiserver = 1000
	for _, c := range []struct {
		line    string
		reaches bool
	}{
		{string(m[1]), true},
		{strings.Join(tmpfilesLine(t), " "), false},
	} {
		root, err := os.MkdirTemp("/tmp", "kms-nonroot")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(root) })
		os.Chmod(root, 0o755)
		kms := filepath.Join(root, "kms")
		b, err := os.ReadFile(testbin.KMS(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(kms, b, 0o755); err != nil {
			t.Fatal(err)
		}
		kek := filepath.Join(root, "kek")
		testbin.WriteKeyring(t, kek, testbin.NewKey())
		if err := os.Chown(kek, nonroot, nonroot); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, "etc/tmpfiles.d"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc/tmpfiles.d/kms.conf"), []byte(c.line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(tmpfiles, "--create", "--boot", "--root="+root).CombinedOutput(); err != nil {
			t.Fatalf("systemd-tmpfiles: %v\n%s", err, out)
		}
		sock := filepath.Join(root, socket)
		d := testbin.Start(t, podCommand(kms, kek, sock, append(nonRootArgs(t, apiserver), "--socket-mode=0660")), "serving KMS")
		status := exec.Command(kms, "status", "--endpoint", "unix://"+sock)
		status.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: apiserver, Gid: apiserver, Groups: []uint32{nonroot}}}
		out, err := status.CombinedOutput()
		if reached := err == nil; reached != c.reaches {
			t.Errorf("%q: kms status as uid %d in group %d: %v, want reached %v\n%s\ndaemon:\n%s", c.line, apiserver, nonroot, err, c.reaches, out, d.Stderr())
		}
		d.Stop(t, syscall.SIGTERM)
	}
}
