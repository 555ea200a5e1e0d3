// Command pullcheck pulls an image back from a registry by digest and checks
// that the registry serves exactly the bytes of the local OCI image layout:
// manifest, config and every layer.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/cmdkms/kms/release/imagebuilder"
)

func main() {
	layoutDir := flag.String("layout", "", "OCI image layout with the expected image (required)")
	ref := flag.String("reference", "", "HOST/NAME@sha256:... to pull (required)")
	flag.Parse()
	if *layoutDir == "" || *ref == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := check(*layoutDir, *ref); err != nil {
		fmt.Fprintln(os.Stderr, "pullcheck: FAIL:", err)
		os.Exit(1)
	}
}

func check(layoutDir, ref string) error {
	// name.Insecure allows plain HTTP, which only the loopback test
	// registries this checks may use.
	d, err := name.NewDigest(ref, name.Insecure)
	if err != nil {
		return err
	}
	if host := d.RegistryStr(); !isLoopback(host) {
		return fmt.Errorf("%s is not a loopback registry", host)
	}
	local, err := imagebuilder.ReadLayout(layoutDir)
	if err != nil {
		return err
	}
	pulled, err := remote.Image(d)
	if err != nil {
		return err
	}
	want, err := local.RawManifest()
	if err != nil {
		return err
	}
	got, err := pulled.RawManifest()
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New("the registry's manifest differs from the layout's")
	}
	wantCfg, err := local.RawConfigFile()
	if err != nil {
		return err
	}
	gotCfg, err := pulled.RawConfigFile()
	if err != nil {
		return err
	}
	if !bytes.Equal(gotCfg, wantCfg) {
		return errors.New("the registry's config differs from the layout's")
	}
	localLayers, err := local.Layers()
	if err != nil {
		return err
	}
	pulledLayers, err := pulled.Layers()
	if err != nil {
		return err
	}
	for i := range localLayers {
		if err := sameBlob(localLayers[i], pulledLayers[i]); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	fmt.Printf("pullcheck: pulled %s: manifest, config and %d layers are byte-equal to the layout's\n", ref, len(pulledLayers))
	return nil
}

func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

func sameBlob(a, b v1.Layer) error {
	ra, err := a.Compressed()
	if err != nil {
		return err
	}
	defer ra.Close()
	rb, err := b.Compressed()
	if err != nil {
		return err
	}
	defer rb.Close()
	ba, err := io.ReadAll(ra)
	if err != nil {
		return err
	}
	bb, err := io.ReadAll(rb)
	if err != nil {
		return err
	}
	if !bytes.Equal(ba, bb) {
		return errors.New("blob bytes differ")
	}
	return nil
}
