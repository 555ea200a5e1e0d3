// Command provenance writes the SLSA v1 provenance predicate of a release
// (see release/provenance) for `cosign attest --type slsaprovenance1`:
//
//	provenance --stamp-status-file stable-status.txt --go-mod go.mod --go-sum go.sum \
//	    --debian-lock release/debian.lock.json --index-layout bazel-bin/release/image \
//	    --builder-id URI --started T --finished T [--file NAME=PATH]... -- BUILD COMMAND...
//
// It reads only the files it is given and writes no network traffic.
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/release/imagebuilder"
	"github.com/cmdkms/kms/release/provenance"
	"github.com/cmdkms/kms/src/cli"
)

const usageHead = `provenance: write the SLSA v1 provenance predicate of a release.

Usage:
  provenance [flags] -- BUILD COMMAND...

BUILD COMMAND is the command that built the release, word by word.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.Command{Name: "provenance", Usage: usageHead, Flags: func(fs *pflag.FlagSet) func([]string) error {
		statusFile := fs.String("stamp-status-file", "", "Bazel stable-status.txt of the --stamp build (version, commit, time)")
		repository := fs.String("repository", "https://github.com/cmdkms/kms", "the source repository")
		goMod := fs.String("go-mod", "", "go.mod of the commit")
		goSum := fs.String("go-sum", "", "go.sum of the commit")
		lock := fs.String("debian-lock", "", "the Debian lock of the image's base")
		layout := fs.String("index-layout", "", "OCI image layout of the release image index")
		files := fs.StringArray("file", nil, "NAME=PATH: another artifact of the release, recorded with its sha256 (repeat)")
		builderID := fs.String("builder-id", "", "URI of the build platform")
		builderVersion := fs.StringArray("builder-version", nil, "PART=VERSION of the build platform, e.g. go=go1.26.8 (repeat)")
		invocation := fs.String("invocation-id", "", "identifier of this run")
		started := fs.String("started", "", "when the build started (RFC 3339)")
		finished := fs.String("finished", "", "when the build finished (RFC 3339)")
		out := fs.String("out", "", "where to write the predicate (default stdout)")
		return func(command []string) error {
			for name, v := range map[string]string{
				"stamp-status-file": *statusFile, "go-mod": *goMod, "go-sum": *goSum, "debian-lock": *lock,
				"index-layout": *layout, "builder-id": *builderID, "started": *started, "finished": *finished,
			} {
				if v == "" {
					return cli.Usagef("--%s is required", name)
				}
			}
			if len(command) == 0 {
				return cli.Usagef("give the build command after --")
			}
			r := provenance.Release{
				Repository: *repository, Command: command, BuilderID: *builderID, InvocationID: *invocation,
				BuilderVersion: map[string]string{}, Images: map[string]string{}, Files: map[string][]byte{},
			}
			var err error
			for flag, t := range map[string]*time.Time{*started: &r.Started, *finished: &r.Finished} {
				if *t, err = time.Parse(time.RFC3339, flag); err != nil {
					return cli.Usagef("%v", err)
				}
			}
			for _, kv := range *builderVersion {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return cli.Usagef("--builder-version %q: want PART=VERSION", kv)
				}
				r.BuilderVersion[k] = v
			}
			for _, kv := range *files {
				name, path, ok := strings.Cut(kv, "=")
				if !ok {
					return cli.Usagef("--file %q: want NAME=PATH", kv)
				}
				if r.Files[name], err = os.ReadFile(path); err != nil {
					return err
				}
			}
			if r.Stamp, err = imagebuilder.ReadStamp(*statusFile); err != nil {
				return err
			}
			if r.GoMod, err = os.ReadFile(*goMod); err != nil {
				return err
			}
			if r.GoSum, err = os.ReadFile(*goSum); err != nil {
				return err
			}
			if r.Debian, err = imagebuilder.ReadLock(*lock); err != nil {
				return err
			}
			if err := platformImages(*layout, r.Images); err != nil {
				return err
			}
			p, err := provenance.New(r)
			if err != nil {
				return err
			}
			var b bytes.Buffer
			if err := p.Write(&b); err != nil {
				return err
			}
			if *out == "" {
				_, err = stdout.Write(b.Bytes())
				return err
			}
			return os.WriteFile(*out, b.Bytes(), 0o644)
		}
	}}.Run(args, stdout, stderr)
}

// platformImages records each platform's manifest digest from the index.
func platformImages(layout string, images map[string]string) error {
	idx, err := imagebuilder.ReadIndex(layout)
	if err != nil {
		return err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	for _, d := range m.Manifests {
		if d.Platform == nil {
			return fmt.Errorf("index entry %s has no platform", d.Digest)
		}
		images["image "+d.Platform.String()] = d.Digest.String()
	}
	return nil
}
