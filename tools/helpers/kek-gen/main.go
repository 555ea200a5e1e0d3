// Command kek-gen makes key encryption keys for kms: a new KEK file, and
// the steps of a rotation on an existing one (a key added for decryption
// only, promoted to primary, retired; or added as primary at once). Files
// are written with mode 0600, atomically, so a daemon reading the file at
// any moment sees either the old keyring or the new one.
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

  Rotating the keys of several kms daemons (one per API server), in two phases:
  kek-gen --add-secondary FILE     1. add a new random key, for decryption only
                                      (copy FILE to every node, refresh every daemon)
  kek-gen --promote KEY_ID FILE    2. make it the primary (same again)
  kek-gen --retire KEY_ID FILE     3. remove the old key, once no data needs it
                                      (kek-census --require-none KEY_ID says so)

  kek-gen --add FILE               add a new random key as the primary at once
                                   (one daemon; the old keys stay, for decryption)

FILE is written with mode 0600 through a temporary file in the same directory,
renamed into place, so readers never see half a file. Edits of FILE wait for each
other: each holds a lock on .FILE.lock beside it. Only key ids are printed,
never key material. A text keyring is written unless --raw is given; adding a key
turns a raw (2018-format) key file into a keyring that keeps the raw key.

Flags:
`

type options struct {
	size            int
	raw, force      bool
	add, addSecond  bool
	promote, retire string
	file            string
	id              kek.ID // of --promote or --retire
}

// editing says whether o changes an existing file.
func (o *options) editing() bool {
	return o.add || o.addSecond || o.promote != "" || o.retire != ""
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
		fs.BoolVar(&o.addSecond, "add-secondary", false, "add a new key to the existing FILE for decryption only, right after the primary")
		fs.StringVar(&o.promote, "promote", "", "make the key with this key_id the primary of FILE")
		fs.StringVar(&o.retire, "retire", "", "remove the key with this key_id from FILE (not the primary)")
		fs.BoolVarP(&o.add, "add", "a", false, "add a new primary key to the existing FILE, keeping its keys and comments")
		return func(args []string) error {
			if len(args) != 1 {
				return cli.Usagef("want exactly one FILE argument, got %d", len(args))
			}
			o.file = args[0]
			if o.size != 16 && o.size != 24 && o.size != 32 {
				return cli.Usagef("--size %d: want 16, 24 or 32", o.size)
			}
			steps := 0
			for _, on := range []bool{o.add, o.addSecond, o.promote != "", o.retire != ""} {
				if on {
					steps++
				}
			}
			switch {
			case steps > 1:
				return cli.Usagef("--add, --add-secondary, --promote and --retire are separate steps: give one")
			case o.editing() && (o.raw || o.force):
				return cli.Usagef("editing FILE keeps its keys and format; --raw and --force only go with a new file")
			}
			var err error
			for _, s := range []string{o.promote, o.retire} {
				if s != "" {
					if o.id, err = kek.ParseID(s); err != nil {
						return cli.Usagef("%v", err)
					}
				}
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

	path := o.file
	// A symlinked file (a mounted Secret, /etc/alternatives style links) is
	// updated where it really is, rather than replaced by a plain file.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	if o.editing() {
		// Before Lock, which would leave a lock file beside a mistyped name.
		if _, err := os.Stat(path); err != nil {
			return err
		}
	}
	// Held from the read to the rename, so edits at once are applied one
	// after the other rather than lost.
	unlock, err := kekfile.Lock(path)
	if err != nil {
		return err
	}
	defer unlock()

	var out []byte
	var old *kekfile.File
	var did string
	switch {
	case o.editing():
		if old, err = kekfile.Read(path); err != nil {
			return err
		}
		out, did, err = edit(o, old.Data, k)
		clear(old.Data)
		if errors.Is(err, kek.ErrAlreadyPrimary) {
			fmt.Fprintf(stdout, "%s: key_id %s is already the primary; nothing changed\n", o.file, o.id)
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", o.file, err)
		}
	case o.raw:
		out = secret
	default:
		out = (&kek.Keyring{Keys: []kek.Key{k}}).Text()
	}
	defer clear(out)

	if err := kekfile.Write(path, out, old, o.editing() || o.force); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists; use --add-secondary or --add to add a key to it, or --force to replace it", o.file)
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
	if did != "" {
		did += "; "
	}
	fmt.Fprintf(stdout, "%s: %s%s, %d key(s), primary key_id %s\n", o.file, did, format, len(ring.Keys), ring.Keys[0].ID)
	return nil
}

// edit applies o's step to file, k being the new key if the step adds one,
// and says what it did.
func edit(o *options, file []byte, k kek.Key) (out []byte, did string, err error) {
	switch {
	case o.add:
		out, err = kek.AddPrimary(file, k)
		return out, fmt.Sprintf("added key_id %s (primary)", k.ID), err
	case o.addSecond:
		out, err = kek.AddSecondary(file, k)
		return out, fmt.Sprintf("added key_id %s (decrypt only)", k.ID), err
	case o.promote != "":
		out, err = kek.Promote(file, o.id)
		return out, fmt.Sprintf("promoted key_id %s", o.id), err
	}
	out, err = kek.Retire(file, o.id)
	return out, fmt.Sprintf("retired key_id %s", o.id), err
}
