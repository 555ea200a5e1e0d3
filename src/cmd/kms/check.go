package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/src/keysource"
)

const checkUsageHead = `kms check: run the KEK command once, as the daemon would, check what it
prints and show the key ids. No socket is opened. Exit status: 0 the KEK is
valid, 1 it is not (the reason goes to stderr), 2 usage error.

Usage:
  kms check --command CMD [--command-timeout D]

Flags:
`

func check(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("kms check", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	command := fs.String("command", "", "command that prints the KEK on stdout (required); run as the daemon runs it")
	timeout := fs.Duration("command-timeout", keysource.DefaultCommandTimeout, "a run that takes longer is killed with its process group")
	err := fs.Parse(args)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Fprint(stdout, checkUsageHead+fs.FlagUsages())
		return 0
	case err == nil && fs.NArg() > 0:
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case err == nil && *command == "":
		err = errors.New("--command is required")
	case err == nil && *timeout <= 0:
		err = fmt.Errorf("--command-timeout %v must be positive", *timeout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "kms check: %v\nRun 'kms check --help' for usage.\n", err)
		return 2
	}
	if err := checkCommand(*command, *timeout, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "kms check: FAILED: %v\n", err)
		return 1
	}
	return 0
}

func checkCommand(command string, timeout time.Duration, stdout, stderr io.Writer) error {
	argv, err := keysource.Argv(keysource.DefaultShell, command)
	if err != nil {
		return err
	}
	start := time.Now()
	f, err := keysource.Fetch(context.Background(), argv, timeout)
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		return err // already carries the command's stderr
	}
	defer func() {
		for _, k := range f.Keys {
			k.Wipe()
		}
	}()
	if f.Stderr != "" {
		fmt.Fprintf(stderr, "the command wrote to stderr (the daemon logs this at debug level): %s\n", f.Stderr)
	}
	format := "text keyring"
	if f.Raw {
		format = "raw key (2018 format)"
	}
	fmt.Fprintf(stdout, "ok: %s with %d key(s), command took %v\n", format, len(f.Keys), took)
	for i, k := range f.Keys {
		role := "decrypt only"
		if i == 0 {
			role = "primary (encrypts new data)"
		}
		fmt.Fprintf(stdout, "%s  %d bytes  %s\n", k.KeyID, k.Size, role)
	}
	return nil
}
