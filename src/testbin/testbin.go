// Package testbin runs the project's programs (the kms daemon, and through
// Binary any other) as separate processes in tests, under src/, tools/ and
// release/ alike: it finds or builds a binary, starts a process and waits
// for it to log that it is ready, and makes short socket directories and
// keyring files.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// The kms daemon's main package, the environment variable in which Bazel
// tests name its binary (see Binary), and the build tag of the daemon's
// test build, which has the hidden flags tests need (--min-timeout,
// --idle-timeout) and a release build lacks. Bazel's is
// //src/cmd/kms:kms_testing.
const (
	KMSPackage = "github.com/cmdkms/kms/src/cmd/kms"
	KMSEnv     = "KMS_BINARY"
	KMSTestTag = "kmstest"
)

var (
	binDir string
	mu     sync.Mutex
	built  = map[string]string{}
)

// Main runs the tests of a package that uses Binary, from its TestMain:
// binaries are built once into a dir that lives as long as the test binary.
func Main(m *testing.M) int {
	dir, err := os.MkdirTemp("", "testbin")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	binDir = dir
	return m.Run()
}

// Binary returns the program of the main package pkg (an import path).
// Under Bazel the test names it in the environment variable env, as the
// rlocationpath of a data dependency: an absolute path is used as is, a
// relative one under the runfiles root. Otherwise it is built once with
// go build, with -race when the test has it, so the program is
// race-checked too; that needs TestMain to call Main.
func Binary(t testing.TB, env, pkg string) string {
	t.Helper()
	return build(t, env, pkg, "")
}

// build is Binary, built with the build tags tags (comma-separated) when
// it is built.
func build(t testing.TB, env, pkg, tags string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		abs, err := resolve(p)
		if err != nil {
			t.Fatalf("%s=%s: %v", env, p, err)
		}
		return abs
	}
	mu.Lock()
	defer mu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	if binDir == "" {
		t.Fatal("testbin.Binary needs TestMain to call testbin.Main")
	}
	out := filepath.Join(binDir, filepath.Base(pkg))
	args := []string{"build", "-o", out}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	if RaceEnabled {
		args = append(args, "-race")
	}
	if b, err := exec.Command("go", append(args, pkg)...).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

// KMS returns the kms daemon's test build ($KMS_BINARY under Bazel).
func KMS(t testing.TB) string {
	t.Helper()
	return build(t, KMSEnv, KMSPackage, KMSTestTag)
}

func resolve(p string) (string, error) {
	if filepath.IsAbs(p) {
		return p, nil
	}
	// Bazel runs tests in <runfiles>/<workspace>; RUNFILES_DIR and
	// TEST_SRCDIR name <runfiles> when set.
	for _, root := range []string{os.Getenv("RUNFILES_DIR"), os.Getenv("TEST_SRCDIR"), "..", "."} {
		if root == "" {
			continue
		}
		c := filepath.Join(root, p)
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			return filepath.Abs(c)
		}
	}
	return "", fmt.Errorf("not found under the runfiles or the working directory")
}
