// Package imagebuilder assembles the release image: a distroless-equivalent
// base layer made from pinned Debian packages and an application layer with
// static binaries, byte-for-byte reproducible from the same inputs.
package imagebuilder

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Binary is one file of the application layer.
type Binary struct {
	Path string // absolute path in the image, e.g. /usr/bin/kms
	Data []byte
}

// Options describe one image.
type Options struct {
	Debs       []Deb
	Binaries   []Binary
	Entrypoint []string
	// Created is the image's creation time and every file's mtime.
	Created time.Time
	// Annotations go on the manifest and, as labels, on the config.
	Annotations map[string]string
}

// Annotation keys of the OCI image spec.
const (
	AnnotationCreated  = "org.opencontainers.image.created"
	AnnotationVersion  = "org.opencontainers.image.version"
	AnnotationRevision = "org.opencontainers.image.revision"
	AnnotationSource   = "org.opencontainers.image.source"
	AnnotationLicenses = "org.opencontainers.image.licenses"
	AnnotationTitle    = "org.opencontainers.image.title"
	AnnotationRefName  = "org.opencontainers.image.ref.name"
)

var elfArch = map[elf.Machine]string{
	elf.EM_X86_64:  "amd64",
	elf.EM_AARCH64: "arm64",
	elf.EM_PPC64:   "ppc64le",
	elf.EM_S390:    "s390x",
	elf.EM_RISCV:   "riscv64",
}

// staticArch returns the image architecture of a binary and refuses
// dynamically linked ones: the base has no libc or loader, so such a binary
// would only fail when the pod starts.
func staticArch(b Binary) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(b.Data))
	if err != nil {
		return "", fmt.Errorf("%s: not an ELF executable: %w", b.Path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s: dynamically linked (has an ELF interpreter); build it static (pure Go, CGO_ENABLED=0)", b.Path)
		}
	}
	arch, ok := elfArch[f.Machine]
	if !ok {
		return "", fmt.Errorf("%s: unsupported ELF machine %v", b.Path, f.Machine)
	}
	return arch, nil
}

func appFS(bins []Binary) (layerFS, string, error) {
	fs := layerFS{}
	arch := ""
	for _, b := range bins {
		if !path.IsAbs(b.Path) || path.Clean(b.Path) != b.Path {
			return nil, "", fmt.Errorf("binary path %q must be absolute and clean", b.Path)
		}
		a, err := staticArch(b)
		if err != nil {
			return nil, "", err
		}
		if arch != "" && a != arch {
			return nil, "", fmt.Errorf("%s is %s but other binaries are %s", b.Path, a, arch)
		}
		arch = a
		p := b.Path[1:]
		if _, dup := fs[p]; dup {
			return nil, "", fmt.Errorf("binary path %s given twice", b.Path)
		}
		fs.file(p, 0o755, b.Data)
	}
	if arch == "" {
		return nil, "", errors.New("no binaries")
	}
	return fs, arch, nil
}

// Build assembles the image.
func Build(o Options) (v1.Image, error) {
	if len(o.Entrypoint) == 0 {
		return nil, errors.New("no entrypoint")
	}
	created := o.Created.UTC()
	base, err := baseFS(o.Debs)
	if err != nil {
		return nil, err
	}
	app, arch, err := appFS(o.Binaries)
	if err != nil {
		return nil, err
	}
	if e, ok := app[o.Entrypoint[0][1:]]; !path.IsAbs(o.Entrypoint[0]) || !ok || e.mode&0o111 == 0 {
		return nil, fmt.Errorf("entrypoint %s is not one of the binaries", o.Entrypoint[0])
	}

	anns := map[string]string{AnnotationCreated: created.Format(time.RFC3339)}
	for k, v := range o.Annotations {
		anns[k] = v
	}

	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      v1.Time{Time: created},
		// The OCI spec requires the type; umoci refuses configs without it.
		RootFS: v1.RootFS{Type: "layers"},
		Config: v1.Config{
			User:       strconv.Itoa(NonrootUID) + ":" + strconv.Itoa(NonrootUID),
			Entrypoint: o.Entrypoint,
			Env: []string{
				"PATH=/usr/bin",
				"SSL_CERT_FILE=/" + CABundle,
			},
			WorkingDir: "/home/nonroot",
			Labels:     anns,
		},
	})
	if err != nil {
		return nil, err
	}

	var debNames []string
	for _, d := range o.Debs {
		debNames = append(debNames, d.Name+"="+d.Version)
	}
	sort.Strings(debNames)
	var binNames []string
	for _, b := range o.Binaries {
		binNames = append(binNames, b.Path)
	}
	sort.Strings(binNames)

	baseLayer, err := base.layer(created)
	if err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	appLayer, err := app.layer(created)
	if err != nil {
		return nil, fmt.Errorf("app layer: %w", err)
	}
	img, err = mutate.Append(img,
		mutate.Addendum{
			Layer:     baseLayer,
			MediaType: types.OCILayer,
			History: v1.History{
				Created:   v1.Time{Time: created},
				CreatedBy: fmt.Sprintf("kms imagebuilder: base (users root, nobody, nonroot; %v)", debNames),
			},
		},
		mutate.Addendum{
			Layer:     appLayer,
			MediaType: types.OCILayer,
			History: v1.History{
				Created:   v1.Time{Time: created},
				CreatedBy: fmt.Sprintf("kms imagebuilder: binaries %v", binNames),
			},
		},
	)
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	return mutate.Annotations(img, anns).(v1.Image), nil
}

// ReadBinary loads a binary for the application layer.
func ReadBinary(imagePath, file string) (Binary, error) {
	b, err := os.ReadFile(file)
	return Binary{Path: imagePath, Data: b}, err
}
