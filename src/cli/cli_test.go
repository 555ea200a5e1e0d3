package cli

import (
	"errors"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestRun(t *testing.T) {
	var ran []string
	cmd := Command{Name: "tool sub", Usage: "tool sub: does things\n\nFlags:\n", Flags: func(fs *pflag.FlagSet) func([]string) error {
		n := fs.Int("n", 1, "how many")
		return func(args []string) error {
			ran = args
			switch {
			case *n < 0:
				return Usagef("--n %d: want 0 or more", *n)
			case *n == 0:
				return errors.New("nothing to do")
			case *n == 7:
				return ErrReported
			}
			return NoArgs(args)
		}
	}}
	for _, tc := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{nil, 0, "", ""},
		{[]string{"--help"}, 0, "tool sub: does things\n\nFlags:\n      --n int", ""},
		{[]string{"--nope"}, 2, "", "tool sub: unknown flag: --nope\nRun 'tool sub --help' for usage.\n"},
		{[]string{"--n", "-1"}, 2, "", "tool sub: --n -1: want 0 or more\n"},
		{[]string{"extra"}, 2, "", `tool sub: unexpected argument "extra"`},
		{[]string{"--n", "0"}, 1, "", "tool sub: nothing to do\n"},
		{[]string{"--n", "7"}, 1, "", ""},
	} {
		var stdout, stderr strings.Builder
		code := cmd.Run(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.HasPrefix(stdout.String(), tc.stdout) || !strings.HasPrefix(stderr.String(), tc.stderr) ||
			(tc.stderr == "" && stderr.Len() > 0) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
	if cmd.Run([]string{"a", "b"}, new(strings.Builder), new(strings.Builder)); strings.Join(ran, ",") != "a,b" {
		t.Errorf("the command got arguments %q", ran)
	}
}
