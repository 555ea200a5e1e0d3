// Package imagebuilder assembles the release image: a distroless-equivalent
// base layer made from pinned Debian packages and a layer of static
// binaries, byte-for-byte reproducible from the same inputs. Each layer is
// its own step (so Bazel rebuilds only what changed), then Image puts them
// together.
package imagebuilder

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Binary is one file of a binary layer.
type Binary struct {
	Path string // absolute path in the image, e.g. /usr/bin/kms
	Data []byte
}

// ReadBinary loads a binary for a binary layer.
func ReadBinary(imagePath, file string) (Binary, error) {
	b, err := os.ReadFile(file)
	return Binary{Path: imagePath, Data: b}, err
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

// StaticArch returns the image architecture of a binary and refuses
// dynamically linked ones: the base has no libc or loader, so such a binary
// would only fail when the pod starts.
func StaticArch(b Binary) (string, error) {
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

// BinaryLayer returns a gzip layer holding the binaries, 0755 root:root.
func BinaryLayer(bins []Binary, mtime time.Time) ([]byte, LayerInfo, error) {
	fs := layerFS{}
	info := LayerInfo{}
	for _, b := range bins {
		if !path.IsAbs(b.Path) || path.Clean(b.Path) != b.Path {
			return nil, info, fmt.Errorf("binary path %q must be absolute and clean", b.Path)
		}
		a, err := StaticArch(b)
		if err != nil {
			return nil, info, err
		}
		if info.Architecture != "" && a != info.Architecture {
			return nil, info, fmt.Errorf("%s is %s but other binaries are %s", b.Path, a, info.Architecture)
		}
		info.Architecture = a
		p := b.Path[1:]
		if _, dup := fs[p]; dup {
			return nil, info, fmt.Errorf("binary path %s given twice", b.Path)
		}
		fs.file(p, 0o755, b.Data)
		info.Executables = append(info.Executables, b.Path)
	}
	if len(bins) == 0 {
		return nil, info, errors.New("no binaries")
	}
	sort.Strings(info.Executables)
	info.CreatedBy = fmt.Sprintf("kms imagebuilder: binaries %v", info.Executables)
	gz, err := fs.gzipLayer(mtime.UTC())
	return gz, info, err
}

// Layer is a layer file and its info, as Image takes them.
type Layer struct {
	Gzip []byte
	Info LayerInfo
}

// ImageOptions describe the image put together from layers.
type ImageOptions struct {
	Layers     []Layer // bottom first
	Entrypoint []string
	// Created is the image's creation time (the layers' file mtimes were
	// set when they were made).
	Created time.Time
	// Annotations go on the manifest and, as labels, on the config.
	Annotations map[string]string
}

// Image assembles an OCI image that runs Entrypoint as 65532:65532.
func Image(o ImageOptions) (v1.Image, error) {
	created := o.Created.UTC()
	arch := ""
	var executables []string
	for _, l := range o.Layers {
		if a := l.Info.Architecture; a != "" {
			if arch != "" && a != arch {
				return nil, fmt.Errorf("layers mix architectures %s and %s", arch, a)
			}
			arch = a
		}
		executables = append(executables, l.Info.Executables...)
	}
	if arch == "" {
		return nil, errors.New("no layer has binaries, so the architecture is unknown")
	}
	if len(o.Entrypoint) == 0 || !slices.Contains(executables, o.Entrypoint[0]) {
		return nil, fmt.Errorf("entrypoint %v does not start with one of the binaries %v", o.Entrypoint, executables)
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
	for i, l := range o.Layers {
		layer, err := OpenLayer(l.Gzip)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     layer,
			MediaType: types.OCILayer,
			History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: l.Info.CreatedBy},
		})
		if err != nil {
			return nil, err
		}
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	return mutate.Annotations(img, anns).(v1.Image), nil
}

// Index puts images of different platforms together as one OCI image index,
// in the order given. The images must carry the same annotations (the same
// build of the same source): the index gets them too.
func Index(images []v1.Image) (v1.ImageIndex, error) {
	if len(images) == 0 {
		return nil, errors.New("no images")
	}
	var anns map[string]string
	var adds []mutate.IndexAddendum
	seen := map[string]bool{}
	for i, img := range images {
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		m, err := img.Manifest()
		if err != nil {
			return nil, err
		}
		if i == 0 {
			anns = m.Annotations
		} else if !maps.Equal(anns, m.Annotations) {
			return nil, fmt.Errorf("image %d has annotations %v, image 0 %v: not one build", i, m.Annotations, anns)
		}
		p := v1.Platform{OS: cf.OS, Architecture: cf.Architecture}
		if seen[p.String()] {
			return nil, fmt.Errorf("two images for %s", p.String())
		}
		seen[p.String()] = true
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), types.OCIImageIndex)
	return mutate.Annotations(idx, anns).(v1.ImageIndex), nil
}
