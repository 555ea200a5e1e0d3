// Package cli is the command-line skeleton every program here shares:
// GNU-style flags (pflag), --help on stdout, errors on stderr, and the
// exit codes 0 (done), 1 (failed) and 2 (called wrongly).
package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"
)

// Command is a program, or one of its subcommands.
type Command struct {
	// Name is how it is called, e.g. "kms check".
	Name string
	// Usage comes before the flags in --help.
	Usage string
	// Flags defines the flags on fs and returns what runs the command once
	// they are parsed, with the arguments left over. Its error is printed
	// as "NAME: error", and the exit code is 1, or 2 for Usagef errors.
	Flags func(fs *pflag.FlagSet) (run func(args []string) error)
}

// Run parses args, runs the command and returns its exit code.
func (c Command) Run(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet(c.Name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported below, once
	fs.SortFlags = false
	run := c.Flags(fs)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Fprint(stdout, c.Usage+fs.FlagUsages())
		return 0
	case err != nil:
		err = usageError{err}
	default:
		err = run(fs.Args())
	}
	var usage usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for usage.\n", c.Name, err, c.Name)
		return 2
	case errors.Is(err, ErrReported):
		return 1
	}
	fmt.Fprintf(stderr, "%s: %v\n", c.Name, err)
	return 1
}

// ErrReported fails a command whose error was already reported (logged).
var ErrReported = errors.New("failed (reported above)")

type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// Usagef is an error in how the command was called: exit code 2.
func Usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// NoArgs is a usage error unless args is empty.
func NoArgs(args []string) error {
	if len(args) > 0 {
		return Usagef("unexpected argument %q", args[0])
	}
	return nil
}
