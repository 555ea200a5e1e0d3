// Package testbin finds the kms binary for tests that run the daemon as a
// separate process.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// KMS returns the path of a kms binary. With KMS_BINARY set (Bazel passes
// it as an rlocationpath of a data dependency) that file is used: an
// absolute path as is, a relative one under the runfiles root. Otherwise
// the daemon is built with `go build` into dir, with -race when the
// calling test binary has it, so the daemon is race-checked too.
func KMS(dir string) (string, error) {
	if p := os.Getenv("KMS_BINARY"); p != "" {
		return resolve(p)
	}
	out := filepath.Join(dir, "kms")
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "github.com/cmdkms/kms/src/cmd/kms")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build kms: %v\n%s", err, b)
	}
	return out, nil
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
		if c := filepath.Join(root, p); fileExists(c) {
			return filepath.Abs(c)
		}
	}
	return "", fmt.Errorf("KMS_BINARY=%s: not found under the runfiles or the working directory", p)
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
