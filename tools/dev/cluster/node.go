package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// Each node is laid out as kubeadm lays out a control-plane node, under
// its own root directory: a process of the node (its kms, kube-apiserver,
// controller manager, and the shell that runs a page's block) runs in a
// mount namespace of its own where the node's directories are bind-mounted
// over the host's paths, and in a UTS namespace whose hostname is the
// node's name. So the pages' paths (/etc/kubernetes/..., /run/kms) and the
// deploy files' are used unchanged, three nodes on one host.
var nodeMounts = []string{"/etc/kubernetes", "/run/kms", "/etc/tmpfiles.d", "/usr/local/bin"}

// podMounts are what the kms static pod mounts besides: its keyring
// directory, /etc/kubernetes/kms on the host, at /etc/kms.
var podMounts = map[string]string{"/etc/kms": "/etc/kubernetes/kms"}

// path is where the node's file at p (an absolute path on the node) is on
// the host.
func (n *node) path(p string) string { return filepath.Join(n.root, p) }

// mountpoints makes the directories the nodes mount over, where the host
// has none, and removes them when the test ends.
func mountpoints(t testing.TB) {
	t.Helper()
	for _, p := range slices.Concat(nodeMounts, slices.Collect(maps.Keys(podMounts))) {
		if err := os.Mkdir(p, 0o755); errors.Is(err, os.ErrExist) {
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
}

// ns runs argv as a process of node n: in new mount and UTS namespaces,
// with the node's directories (and binds, node path -> host path on the
// node) mounted, and the node's name as hostname.
func (n *node) ns(binds map[string]string, argv []string) []string {
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, p := range nodeMounts {
		fmt.Fprintf(&script, "mount --bind '%s' '%s'\n", n.path(p), p)
	}
	for p, on := range binds {
		fmt.Fprintf(&script, "mount --bind '%s' '%s'\n", n.path(on), p)
	}
	script.WriteString(`hostname "$0"` + "\nexec \"$@\"\n")
	return append([]string{"unshare", "--mount", "--uts", "--propagation", "private", "/bin/sh", "-c", script.String(), n.name}, argv...)
}

// layout makes the node's directories and files that kubeadm would have
// made before kms is deployed: its PKI, admin.conf and controller-manager.conf.
func (c *Cluster) layout(t testing.TB, n *node) {
	t.Helper()
	for _, d := range []string{"/etc/kubernetes/manifests", "/etc/kubernetes/pki/etcd", "/etc/kubernetes/enc", "/run/kms", "/etc/tmpfiles.d", "/usr/local/bin"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(n.path("/etc/kubernetes/enc"), 0o700)
	c.pki.node(t, n)
	c.pki.kubeconfig(t, n.path("/etc/kubernetes/admin.conf"), []*node{n})
	c.pki.kubeconfig(t, n.path("/etc/kubernetes/controller-manager.conf"), []*node{n})
}

// bundle lays out what the drill runs airgap.md's blocks in, as the
// release bundle would be unpacked: deploy/ from release/deploy, bin/ the
// drill's binaries, DIGEST.
func (c *Cluster) bundle(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(c.Dir, "kms-drill")
	deploy, err := filepath.Abs(filepath.Join(root, "release/deploy"))
	if err != nil {
		t.Fatal(err)
	}
	c.Sh(t, fmt.Sprintf("mkdir -p %s/bin && cp -r %s %s/deploy && ln -s %s %s/bin/linux-%s && echo sha256:%064d >%s/DIGEST",
		dir, deploy, dir, c.bin, dir, runtime.GOARCH, 0, dir))
	return dir
}

// notes are the shell variables the pages carry from one block to the
// next (each page's header names them): an operator's session, shared by
// the nodes as an operator carries a key_id from one terminal to another.
var notes = []string{"REGISTRY", "RESOURCES", "OLD", "NEW", "ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY"}

// Run runs block ref on node n as the page says: with bash -e -o pipefail,
// as root, in the node's namespaces, in the unpacked bundle, with
// kubectl's KUBECONFIG set as kubeadm has root set it, and the pages'
// variables from the blocks run before. It returns the block's output and
// exit code.
func (c *Cluster) Run(t testing.TB, n *node, ref BlockRef) (stdout, stderr string, code int) {
	t.Helper()
	b, err := ref.find(c.blocks)
	if err != nil {
		t.Fatal(err)
	}
	first := c.ran.add(ref, n.name)
	script := fmt.Sprintf(". %s\ntrap 'code=$?; if [ $code = 0 ]; then for v in %s; do [ -z \"${!v+x}\" ] || declare -p \"$v\"; done >%s; fi' EXIT\n%s\n",
		c.notes, strings.Join(notes, " "), c.notes, b.Text)
	stdout, stderr, code = c.nodeRun(t, n, []string{"bash", "-e", "-o", "pipefail", "-c", script})
	shown := stdout
	if code != 0 {
		shown += stderr
	}
	text := "(as before)"
	if first { // the block in full, the first time on each node
		text = strings.ReplaceAll(b.Text, "\n", "\n    ")
	}
	t.Logf("%s: %s:%d (%s)\n    %s\n    # exit %d%s", n.name, b.Page, b.Line, b.Heading, text, code, indent(shown, 12))
	return stdout, stderr, code
}

// MustRun is Run that fails the test unless the block exits 0.
func (c *Cluster) MustRun(t testing.TB, n *node, ref BlockRef) string {
	t.Helper()
	out, errOut, code := c.Run(t, n, ref)
	if code != 0 {
		t.Fatalf("%s: %v exited %d:\n%s%s", n.name, ref, code, out, errOut)
	}
	return out
}

// NodeSh runs the drill's own cmdline on node n (as Run runs a block),
// failing the test unless it exits 0, and returns its stdout.
func (c *Cluster) NodeSh(t testing.TB, n *node, cmdline string) string {
	t.Helper()
	out, errOut, code := c.nodeRun(t, n, []string{"bash", "-e", "-o", "pipefail", "-c", cmdline})
	if code != 0 {
		t.Fatalf("%s: $ %s\nexit %d\n%s%s", n.name, cmdline, code, out, errOut)
	}
	return out
}

func (c *Cluster) nodeRun(t testing.TB, n *node, argv []string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	argv = n.ns(nil, argv)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = c.bundleDir
	cmd.Env = append(os.Environ(),
		"PATH="+c.bin+":"+os.Getenv("PATH"),
		"KUBECONFIG=/etc/kubernetes/admin.conf",
	)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// note is the value of a page's variable (see notes) after the blocks run
// so far.
func (c *Cluster) note(t testing.TB, name string) string {
	t.Helper()
	out, err := exec.Command("bash", "-c", fmt.Sprintf(". %s && printf %%s \"$%s\"", c.notes, name)).Output()
	if err != nil {
		t.Fatalf("%s: %v", c.notes, err)
	}
	return string(out)
}

// kmsPod is the container of the node's kms static pod
// (/etc/kubernetes/manifests/kms.yaml, which airgap.md's Deploy makes
// from release/deploy/kms-static-pod.yaml) with its pod's user.
func (n *node) kmsPod(t testing.TB) (corev1.Container, *corev1.PodSecurityContext) {
	t.Helper()
	data, err := os.ReadFile(n.path("/etc/kubernetes/manifests/kms.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("kms.yaml: %v", err)
	}
	if len(pod.Spec.Containers) != 1 || pod.Spec.SecurityContext == nil || pod.Spec.SecurityContext.RunAsUser == nil || pod.Spec.SecurityContext.RunAsGroup == nil {
		t.Fatalf("kms.yaml: want one container and the pod's runAsUser and runAsGroup: %s", data)
	}
	return pod.Spec.Containers[0], pod.Spec.SecurityContext
}

// apiServerManifest writes the node's /etc/kubernetes/manifests/kube-apiserver.yaml
// as kubeadm writes it, with the arguments the drill starts it with.
func (n *node) apiServerManifest(t testing.TB, version string, argv []string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: %s:%d
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
`, n.ip, n.apiPort)
	for _, a := range argv[1:] {
		fmt.Fprintf(&b, "    - %s\n", a)
	}
	fmt.Fprintf(&b, "    image: kube-apiserver:%s\n    name: kube-apiserver\n  hostNetwork: true\n", version)
	writeFile(t, n.path("/etc/kubernetes/manifests/kube-apiserver.yaml"), []byte(b.String()))
}
