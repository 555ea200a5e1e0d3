// Command pullcheck pulls an image index back from a registry by digest and
// checks that the registry serves exactly the bytes of the local OCI image
// layout: the index, and each platform's manifest, config and layers.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
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
	return cli.Command{Name: "pullcheck", Usage: "pullcheck: pull an image index from a loopback registry by digest and compare it with a layout, byte for byte\n\nFlags:\n",
		Flags: func(fs *pflag.FlagSet) func([]string) error {
			layoutDir := fs.String("layout", "", "OCI image layout with the expected image index (required)")
			ref := fs.String("reference", "", "HOST/NAME@sha256:... to pull (required)")
			return func(args []string) error {
				if err := cli.NoArgs(args); err != nil {
					return err
				}
				if *layoutDir == "" || *ref == "" {
					return cli.Usagef("--layout and --reference are required")
				}
				return check(*layoutDir, *ref, stdout)
			}
		}}.Run(args, stdout, stderr)
}

func check(layoutDir, ref string, stdout io.Writer) error {
	// name.Insecure allows plain HTTP, which only the loopback test
	// registries this checks may use.
	d, err := name.NewDigest(ref, name.Insecure)
	if err != nil {
		return err
	}
	if host := d.RegistryStr(); !loopback.Host(host) {
		return fmt.Errorf("%s is not a loopback registry", host)
	}
	local, err := imagebuilder.ReadIndex(layoutDir)
	if err != nil {
		return err
	}
	pulled, err := remote.Index(d)
	if err != nil {
		return err
	}
	if err := sameBytes("index", local.RawManifest, pulled.RawManifest); err != nil {
		return err
	}
	m, err := local.IndexManifest()
	if err != nil {
		return err
	}
	for _, desc := range m.Manifests {
		want, err := local.Image(desc.Digest)
		if err != nil {
			return err
		}
		got, err := pulled.Image(desc.Digest)
		if err != nil {
			return err
		}
		n, err := sameImage(want, got)
		if err != nil {
			return fmt.Errorf("%s image: %w", desc.Platform, err)
		}
		fmt.Fprintf(stdout, "pullcheck: %s %s: manifest, config and %d layers are byte-equal to the layout's\n", desc.Platform, desc.Digest, n)
	}
	fmt.Fprintf(stdout, "pullcheck: pulled %s: the index is byte-equal to the layout's\n", ref)
	return nil
}

func sameImage(want, got v1.Image) (int, error) {
	if err := sameBytes("manifest", want.RawManifest, got.RawManifest); err != nil {
		return 0, err
	}
	if err := sameBytes("config", want.RawConfigFile, got.RawConfigFile); err != nil {
		return 0, err
	}
	wantLayers, err := want.Layers()
	if err != nil {
		return 0, err
	}
	gotLayers, err := got.Layers()
	if err != nil {
		return 0, err
	}
	if len(gotLayers) != len(wantLayers) {
		return 0, fmt.Errorf("%d layers, want %d", len(gotLayers), len(wantLayers))
	}
	for i := range wantLayers {
		if err := sameBytes(fmt.Sprintf("layer %d", i), compressed(wantLayers[i]), compressed(gotLayers[i])); err != nil {
			return 0, err
		}
	}
	return len(gotLayers), nil
}

func sameBytes(what string, want, got func() ([]byte, error)) error {
	w, err := want()
	if err != nil {
		return err
	}
	g, err := got()
	if err != nil {
		return err
	}
	if !bytes.Equal(w, g) {
		return errors.New("the registry's " + what + " differs from the layout's")
	}
	return nil
}

func compressed(l v1.Layer) func() ([]byte, error) {
	return func() ([]byte, error) {
		rc, err := l.Compressed()
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}
}
