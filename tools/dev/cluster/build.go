// Package cluster runs a real Kubernetes control plane on one machine for
// the HA drill of issue 12: a three-member etcd cluster and three
// kube-apiservers, each with its own kms daemon, on 127.0.0.11-13.
//
// The operator's pages are its input (pages.go): it runs the shell blocks
// of docs/rotation.md, docs/verify.md and docs/airgap.md's static pod
// install as written, on nodes laid out as kubeadm lays them out (node.go),
// and judges the outcome with its own checks.
//
// It is its own Go module so that kube-apiserver's ~1 GB of dependencies
// stay out of the product's go.mod; it talks to the product only through
// its binaries (kms, kek-gen, kek-census), built from the main module.
package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce  sync.Once
	binDir     string
	k8sVersion string // of kube-apiserver, as its static pod's image names it
	buildErr   error
)

// BinDir returns the directory holding etcd, etcdctl, kube-apiserver,
// kube-controller-manager, kubectl, kms, kek-gen, kek-file and kek-census, building
// them on first use. The Go build cache makes a rebuild a matter of
// linking.
func BinDir(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		start := time.Now()
		binDir, buildErr = build()
		t.Logf("binaries built in %v", time.Since(start).Round(time.Second))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// RemoveBinDir removes what BinDir built (from TestMain).
func RemoveBinDir() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

func build() (string, error) {
	dir, err := os.MkdirTemp("", "cluster-bin")
	if err != nil {
		return "", err
	}
	// kms runs as its static pod's user, which must reach its binaries.
	if err := os.Chmod(dir, 0o755); err != nil {
		return dir, err
	}
	out := dir + string(filepath.Separator)
	k8s, err := goCmd("", "list", "-m", "-f", "{{.Version}}", "k8s.io/kubernetes")
	if err != nil {
		return dir, err
	}
	k8s = strings.TrimSpace(k8s)
	k8sVersion = k8s
	major, minor, _ := strings.Cut(strings.TrimPrefix(k8s, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	// Unstamped, the Kubernetes programs call themselves v0.0.0-master.
	v := "k8s.io/component-base/version"
	ldflags := fmt.Sprintf("-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s", v, k8s, v, major, v, minor)
	// One invocation, so the shared dependencies are compiled once.
	if _, err := goCmd("", "build", "-o", out, "-ldflags", ldflags,
		"./cmd/etcd", "go.etcd.io/etcd/etcdctl/v3",
		"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
		"k8s.io/kubernetes/cmd/kubectl"); err != nil {
		return dir, err
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		return dir, err
	}
	_, err = goCmd(root, "build", "-o", out, "./src/cmd/kms", "./tools/helpers/kek-gen", "./tools/helpers/kek-file", "./tools/helpers/kek-census")
	return dir, err
}

func goCmd(dir string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", fmt.Errorf("go %s: %v", strings.Join(args, " "), err)
	}
	return string(out), nil
}
