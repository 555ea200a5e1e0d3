// Command kek-file prints a KEK file for kms's --command: it checks that
// the file is private and holds a valid raw key or text keyring first, so
// that a bad file fails loudly here instead of as a confusing daemon error.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/src/cli"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/tools/helpers/internal/kekfile"
)

const usageHead = `kek-file: print a KEK file (a raw 16/24/32-byte key or a text keyring) on stdout,
for kms --command, after checking it.

Usage:
  kek-file [--allow-insecure-permissions] FILE

kms --command 'kek-file /etc/kms/kek' (with systemd: LoadCredential=kek:/etc/kms/kek and
--command 'kek-file ${CREDENTIALS_DIRECTORY}/kek').

The file is refused, and nothing is printed, when it is not a regular file, when
group or others may read or write it (a Kubernetes Secret volume is 0644 unless its
defaultMode says 0400), or when its contents are not a valid KEK. Errors go to
stderr and never contain key material. Exit status: 0 printed, 1 refused, 2 usage.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the exit code: 0 printed, 1 refused, 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
	return cli.Command{Name: "kek-file", Usage: usageHead, Flags: func(fs *pflag.FlagSet) func([]string) error {
		insecure := fs.Bool("allow-insecure-permissions", false, "print the file even if group or others may read or write it")
		return func(args []string) error {
			if len(args) != 1 {
				return cli.Usagef("want exactly one FILE argument, got %d", len(args))
			}
			return printKEK(args[0], *insecure, stdout)
		}
	}}.Run(args, stdout, stderr)
}

func printKEK(path string, insecure bool, stdout io.Writer) error {
	f, err := kekfile.Read(path)
	if err != nil {
		return err
	}
	defer clear(f.Data)
	if perm := f.Mode.Perm(); perm&0o077 != 0 && !insecure {
		return fmt.Errorf("%s has mode %04o: group or others may read or change the key; "+
			"chmod 0600 it (or pass --allow-insecure-permissions)", path, perm)
	}
	ring, err := kek.Parse(f.Data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	ring.Wipe()
	// As read, byte for byte: the daemon parses it again, and a raw key
	// must not gain or lose a byte.
	_, err = stdout.Write(f.Data)
	return err
}
