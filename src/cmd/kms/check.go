package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/src/cli"
	"github.com/cmdkms/kms/src/keysource"
)

const checkUsageHead = `kms check: run the KEK command once, as the daemon would, check what it
prints and show the key ids. No socket is opened. Exit status: 0 the KEK is
valid, 1 it is not (the reason goes to stderr), 2 usage error.

Usage:
  kms check --command CMD [--command-timeout D]

Flags:
`

// checkCommand is `kms check`, writing to stdout and stderr.
func checkCommand(stdout, stderr io.Writer) cli.Command {
	return cli.Command{Name: "kms check", Usage: checkUsageHead, Flags: func(fs *pflag.FlagSet) func([]string) error {
		command := fs.String("command", "", "command that prints the KEK on stdout (required); run as the daemon runs it")
		timeout := fs.Duration("command-timeout", keysource.DefaultCommandTimeout, "a run that takes longer is killed with its process group")
		return func(args []string) error {
			switch {
			case len(args) > 0:
				return cli.NoArgs(args)
			case *command == "":
				return cli.Usagef("--command is required")
			case *timeout <= 0:
				return cli.Usagef("--command-timeout %v must be positive", *timeout)
			}
			if err := check(*command, *timeout, stdout, stderr); err != nil {
				return fmt.Errorf("FAILED: %w", err)
			}
			return nil
		}
	}}
}

func check(command string, timeout time.Duration, stdout, stderr io.Writer) error {
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
