package main

import (
	"bytes"
	"strings"
	"testing"
)

// A release build has no test-only flags: nothing lowers the 1m floor of
// --timeout or the idle timeout. This package's test binary is one (go test
// and Bazel build it without the kmstest tag), unlike the daemon that
// src/testbin gives the other tests.
func TestReleaseBuildKeepsTheFloors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--command", "true", "--min-timeout", "1s", "--timeout", "2s"}, "unknown flag: --min-timeout"},
		{[]string{"--command", "true", "--idle-timeout", "1s"}, "unknown flag: --idle-timeout"},
		{[]string{"--command", "true", "--timeout", "2s"}, "below the minimum of 1m0s"},
	} {
		var out bytes.Buffer
		if code := run(tc.args, &out, &out); code != 2 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%q: exit %d, %q; want 2 and %q", tc.args, code, out.String(), tc.want)
		}
	}
}

// --help names every subcommand.
func TestHelpListsSubcommands(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, &out, &out); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, sub := range []string{"kms check", "kms status", "kms refresh", "kms --version"} {
		if !strings.Contains(out.String(), sub) {
			t.Errorf("--help does not list %s:\n%s", sub, out.String())
		}
	}
}
