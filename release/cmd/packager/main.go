// Command packager writes kms's .deb and .rpm for one architecture (see
// release/packages), the action of release/packages.bzl's linux_packages:
//
//	packager --arch amd64 --file /usr/bin/kms=FILE:0755 --file /usr/share/doc/kms/README.md=FILE \
//	    [--version V --source-date-epoch N | --stamp-status-file stable-status.txt] \
//	    --out-dir DIR
//
// It writes DIR/kms_VERSION_ARCH.deb and DIR/kms-VERSION-1.ARCH.rpm (names in
// each format's convention, VERSION as packages.PackageVersion makes it).
//
// Every input is a file or a flag, so equal inputs give equal packages.
package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/release/imagebuilder"
	"github.com/cmdkms/kms/release/packages"
	"github.com/cmdkms/kms/src/cli"
)

const usageHead = `packager: write kms's .deb and .rpm for one architecture.

Usage:
  packager --arch ARCH --file PATH=FILE[:MODE]... --out-dir DIR

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.Command{Name: "packager", Usage: usageHead, Flags: func(fs *pflag.FlagSet) func([]string) error {
		arch := fs.String("arch", "", "GOARCH of the binaries: amd64 or arm64")
		files := fs.StringArray("file", nil, "PATH=FILE[:MODE]: FILE installed as PATH, MODE octal (default 0644) (repeat)")
		version := fs.String("version", "devel", "release version (git describe)")
		epoch := fs.Int64("source-date-epoch", 0, "every file's mtime and the build time, seconds since 1970")
		statusFile := fs.String("stamp-status-file", "", "Bazel stable-status.txt of a --stamp build; overrides --version and --source-date-epoch")
		outDir := fs.String("out-dir", "", "directory to write the .deb and the .rpm into")
		return func(rest []string) error {
			if err := cli.NoArgs(rest); err != nil {
				return err
			}
			if *arch == "" || *outDir == "" {
				return cli.Usagef("--arch and --out-dir are required")
			}
			p := packages.Package{Version: *version, Arch: *arch, Time: time.Unix(*epoch, 0).UTC()}
			if *statusFile != "" {
				st, err := imagebuilder.ReadStamp(*statusFile)
				if err != nil {
					return err
				}
				p.Version, p.Time = st.Version, time.Unix(st.Epoch, 0).UTC()
			}
			for _, spec := range *files {
				f, err := readFile(spec)
				if err != nil {
					return err
				}
				p.Files = append(p.Files, f)
			}
			if err := os.MkdirAll(*outDir, 0o755); err != nil {
				return err
			}
			for name, write := range map[string]func() ([]byte, error){p.DebName(): p.Deb, p.RPMName(): p.RPM} {
				b, err := write()
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(*outDir, name), b, 0o644); err != nil {
					return err
				}
				fmt.Fprintln(stdout, name)
			}
			return nil
		}
	}}.Run(args, stdout, stderr)
}

// readFile reads one --file PATH=FILE[:MODE].
func readFile(spec string) (packages.File, error) {
	dest, src, ok := strings.Cut(spec, "=")
	if !ok {
		return packages.File{}, cli.Usagef("--file %q: want PATH=FILE[:MODE]", spec)
	}
	mode := fs.FileMode(0o644)
	if i := strings.LastIndex(src, ":"); i >= 0 {
		m, err := strconv.ParseUint(src[i+1:], 8, 32)
		if err != nil {
			return packages.File{}, cli.Usagef("--file %q: mode: %v", spec, err)
		}
		src, mode = src[:i], fs.FileMode(m)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return packages.File{}, err
	}
	return packages.File{Path: dest, Mode: mode, Data: data}, nil
}
