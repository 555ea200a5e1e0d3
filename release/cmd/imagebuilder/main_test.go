package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		out  string // in stdout or stderr
	}{
		{nil, 2, "usage: imagebuilder archive|base-layer|binary-layer|deb-file|image|index|sbom [flags]"},
		{[]string{"layer"}, 2, "usage: imagebuilder"},
		{[]string{"index", "--help"}, 0, "--image stringArray"},
		{[]string{"index", "--layout", "x", "--digest", "y"}, 2, "imagebuilder index: --image is required"},
		{[]string{"archive", "--layout", "x", "--out", "y", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"archive", "-layout", "x"}, 2, "unknown shorthand flag"},
		{[]string{"binary-layer", "--out", "x", "--info", "y", "--binary", "kms"}, 2, `--binary "kms": want IMAGE_PATH=FILE`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(c.args, &stdout, &stderr)
		if code != c.code || !strings.Contains(stdout.String()+stderr.String(), c.out) {
			t.Errorf("%q: exit %d, want %d with %q\nstdout: %s\nstderr: %s", c.args, code, c.code, c.out, &stdout, &stderr)
		}
	}
}

// Unstamped builds are "devel", as `kms --version` calls them; a status
// file sets version, commit and time.
func TestStamp(t *testing.T) {
	var got *stamp
	c := step("x", "", nil, func(fs *pflag.FlagSet) func() error {
		got = stampFlags(fs)
		return got.resolve
	})
	if code := c.Run(nil, &bytes.Buffer{}, os.Stderr); code != 0 || got.version != "devel" || got.epoch != 0 {
		t.Errorf("unstamped: exit %d, %+v", code, got)
	}
	status := filepath.Join(t.TempDir(), "stable-status.txt")
	os.WriteFile(status, []byte("STABLE_KMS_VERSION v1.2.3\nSTABLE_KMS_COMMIT abc\nSTABLE_KMS_SOURCE_DATE_EPOCH 1000000000\n"), 0o644)
	if code := c.Run([]string{"--stamp-status-file", status}, &bytes.Buffer{}, os.Stderr); code != 0 ||
		got.version != "v1.2.3" || got.revision != "abc" || got.time().Year() != 2001 {
		t.Errorf("stamped: exit %d, %+v", code, got)
	}
	os.WriteFile(status, []byte("STABLE_KMS_VERSION v1.2.3\n"), 0o644)
	if code := c.Run([]string{"--stamp-status-file", status}, &bytes.Buffer{}, &bytes.Buffer{}); code != 1 {
		t.Errorf("a status file without commit and time: exit %d", code)
	}
}
