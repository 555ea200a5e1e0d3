// Command push uploads the image index of an OCI image layout (the release
// image, all its platforms) to a registry and prints its digest reference.
// `tools/bazel run //release:push -- --repository HOST/NAME[:TAG]` runs it
// on the layout Bazel built.
//
// Plain HTTP is used only for loopback registries (see release/loopback):
// everything else must speak TLS.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/release/imagebuilder"
	"github.com/cmdkms/kms/release/loopback"
	"github.com/cmdkms/kms/src/cli"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.Command{Name: "push", Usage: "push: upload the image index of an OCI image layout to a registry; print HOST/NAME@sha256:...\n\nFlags:\n",
		Flags: func(fs *pflag.FlagSet) func([]string) error {
			layoutDir := fs.String("layout", "", "OCI image layout holding the image index (required)")
			repository := fs.String("repository", "", "HOST[:PORT]/NAME[:TAG] to push to; without a tag the index is pushed by digest only (required)")
			return func(args []string) error {
				if err := cli.NoArgs(args); err != nil {
					return err
				}
				if *layoutDir == "" || *repository == "" {
					return cli.Usagef("--layout and --repository are required")
				}
				ref, err := push(*layoutDir, *repository)
				if err != nil {
					return err
				}
				fmt.Fprintln(stdout, ref)
				return nil
			}
		}}.Run(args, stdout, stderr)
}

func push(layoutDir, repository string) (string, error) {
	// Docker's rule: without a host-like first component (a dot, a port or
	// "localhost"), a name means Docker Hub; a release push never should.
	if host, _, ok := strings.Cut(repository, "/"); !ok || (!strings.ContainsAny(host, ".:") && host != "localhost") {
		return "", fmt.Errorf("--repository %s: start with the registry host, e.g. 127.0.0.1:5000/kms", repository)
	}
	ref, err := name.ParseReference(repository, name.WithDefaultTag(""))
	if err != nil {
		return "", err
	}
	if _, isDigest := ref.(name.Digest); isDigest {
		return "", fmt.Errorf("--repository %s: give a tag or nothing, not a digest", repository)
	}
	idx, err := imagebuilder.ReadIndex(layoutDir)
	if err != nil {
		return "", err
	}
	digest, err := idx.Digest()
	if err != nil {
		return "", err
	}
	target := ref
	if ref.Identifier() == "" {
		target = ref.Context().Digest(digest.String())
	}
	opts := []remote.Option{
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithTransport(loopback.OnlyHTTP(remote.DefaultTransport)),
	}
	if err := remote.WriteIndex(target, idx, opts...); err != nil {
		return "", err
	}
	// Read back what the registry now serves under the reference.
	desc, err := remote.Head(target, opts...)
	if err != nil {
		return "", err
	}
	if desc.Digest != digest {
		return "", fmt.Errorf("registry serves %s for %s, pushed %s", desc.Digest, target, digest)
	}
	return ref.Context().Digest(digest.String()).String(), nil
}
