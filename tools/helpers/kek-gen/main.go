// Command kek-gen makes key encryption keys for kms: a new KEK file, or a
// new primary key added to an existing one (rotation). Files are written
// with mode 0600, atomically, so a daemon reading the file at any moment
// sees either the old keyring or the new one.
package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/src/cli"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/tools/helpers/internal/kekfile"
)

const usageHead = `kek-gen: make key encryption keys (KEKs) for kms.

Usage:
  kek-gen [--size 32] [--raw] [--force] FILE   write FILE with one new random key
  kek-gen --add FILE                           rotate: put a new random key first in FILE
                                               (the new primary); the old keys stay, for decryption

FILE is written with mode 0600 through a temporary file in the same directory,
renamed into place, so readers never see half a file. Only key ids are printed,
never key material. A text keyring is written unless --raw is given; --add turns
a raw (2018-format) key file into a keyring that keeps the raw key as its second key.

Flags:
`

type options struct {
	size  int
	raw   bool
	force bool
	add   bool
	file  string
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the exit code: 0 ok, 1 failure, 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
	return cli.Command{Name: "kek-gen", Usage: usageHead, Flags: func(fs *pflag.FlagSet) func([]string) error {
		o := &options{}
		fs.IntVarP(&o.size, "size", "s", 32, "key size in bytes: 16, 24 or 32 (AES-128, -192, -256)")
		fs.BoolVar(&o.raw, "raw", false, "write the bare key bytes (the 2018 format) instead of a text keyring; not with --add")
		fs.BoolVarP(&o.force, "force", "f", false, "replace FILE if it exists (its keys are lost: data encrypted with them cannot be read again)")
		fs.BoolVarP(&o.add, "add", "a", false, "add a new primary key to the existing FILE, keeping its keys and comments")
		return func(args []string) error {
			if len(args) != 1 {
				return cli.Usagef("want exactly one FILE argument, got %d", len(args))
			}
			o.file = args[0]
			if o.size != 16 && o.size != 24 && o.size != 32 {
				return cli.Usagef("--size %d: want 16, 24 or 32", o.size)
			}
			if o.add && (o.raw || o.force) {
				return cli.Usagef("--add keeps the file's keys and format; it does not go with --raw or --force")
			}
			return generate(o, stdout)
		}
	}}.Run(args, stdout, stderr)
}

func generate(o *options, stdout io.Writer) error {
	secret := make([]byte, o.size)
	defer clear(secret)
	rand.Read(secret) // never fails on Linux (Go 1.24+ crashes rather than return an error)
	k, err := kek.NewKey(secret)
	if err != nil {
		return err
	}

	var out []byte
	var old *kekfile.File
	switch {
	case o.add:
		if old, err = kekfile.Read(o.file); err != nil {
			return err
		}
		out, err = kek.AddPrimary(old.Data, k)
		clear(old.Data)
		if err != nil {
			return fmt.Errorf("%s: %w", o.file, err)
		}
	case o.raw:
		out = secret
	default:
		out = (&kek.Keyring{Keys: []kek.Key{k}}).Text()
	}
	defer clear(out)

	path := o.file
	// A symlinked file (a mounted Secret, /etc/alternatives style links) is
	// updated where it really is, rather than replaced by a plain file.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	if err := kekfile.Write(path, out, old, o.add || o.force); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists; use --add to add a key to it, or --force to replace it", o.file)
		}
		return err
	}
	// Parse what was written, so that what is reported is what a daemon will see.
	ring, err := kek.Parse(out)
	if err != nil {
		return fmt.Errorf("BUG: wrote %s but cannot parse it back: %w", o.file, err)
	}
	defer ring.Wipe()
	format := "text keyring"
	if ring.Raw {
		format = "raw key"
	}
	fmt.Fprintf(stdout, "%s: %s, %d key(s), primary key_id %s\n", o.file, format, len(ring.Keys), ring.Keys[0].ID)
	return nil
}
