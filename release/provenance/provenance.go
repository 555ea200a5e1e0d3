// Package provenance writes the SLSA v1 provenance predicate of a release
// (https://slsa.dev/provenance/v1): which source commit was built, by which
// builder and command, from which pinned inputs, giving which artifacts.
// `cosign attest --type slsaprovenance1` wraps it in an in-toto statement
// whose subject is the pushed image index and signs it.
package provenance

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/cmdkms/kms/release/gomod"
	"github.com/cmdkms/kms/release/imagebuilder"
)

// PredicateType is the in-toto predicate type of SLSA provenance v1.
const PredicateType = "https://slsa.dev/provenance/v1"

// BuildType names how to read this predicate's externalParameters; the
// page it points to (docs/release.md) describes them.
const BuildType = "https://github.com/cmdkms/kms/blob/main/docs/release.md#provenance"

// Predicate is the SLSA v1 provenance predicate.
type Predicate struct {
	BuildDefinition BuildDefinition `json:"buildDefinition"`
	RunDetails      RunDetails      `json:"runDetails"`
}

// BuildDefinition is what was built, from what.
type BuildDefinition struct {
	BuildType            string               `json:"buildType"`
	ExternalParameters   ExternalParameters   `json:"externalParameters"`
	ResolvedDependencies []ResourceDescriptor `json:"resolvedDependencies"`
}

// ExternalParameters are the inputs the release engineer chose.
type ExternalParameters struct {
	// Source is the repository and commit, as a SPDX download location.
	Source string `json:"source"`
	// Version is the stamped release version (git describe).
	Version string `json:"version"`
	// Command is the build command, word by word, run at the root of the
	// source tree.
	Command []string `json:"command"`
	// SourceDateEpoch is the time stamped into the image (seconds).
	SourceDateEpoch int64 `json:"sourceDateEpoch"`
}

// ResourceDescriptor is an in-toto resource descriptor: at least a URI or
// a digest.
type ResourceDescriptor struct {
	Name   string            `json:"name,omitempty"`
	URI    string            `json:"uri,omitempty"`
	Digest map[string]string `json:"digest,omitempty"`
}

// RunDetails is who built it, when.
type RunDetails struct {
	Builder    Builder              `json:"builder"`
	Metadata   Metadata             `json:"metadata"`
	Byproducts []ResourceDescriptor `json:"byproducts,omitempty"`
}

// Builder identifies the build platform and the versions of its parts.
type Builder struct {
	ID      string            `json:"id"`
	Version map[string]string `json:"version,omitempty"`
}

// Metadata is the run's identity and times.
type Metadata struct {
	InvocationID string    `json:"invocationId,omitempty"`
	StartedOn    time.Time `json:"startedOn"`
	FinishedOn   time.Time `json:"finishedOn"`
}

// Release is everything the predicate is made from.
type Release struct {
	// Repository is the source repository's URL (https://...).
	Repository string
	Stamp      imagebuilder.Stamp
	Command    []string
	// GoMod and GoSum are the main module's files at the commit.
	GoMod, GoSum []byte
	// Debian lists the packages the image's base was made from.
	Debian *imagebuilder.Lock
	// BuilderID and BuilderVersion describe the build platform.
	BuilderID      string
	BuilderVersion map[string]string
	InvocationID   string
	Started        time.Time
	Finished       time.Time
	// Images are the platform images of the index: name (linux/ARCH) ->
	// manifest digest (sha256:...).
	Images map[string]string
	// Files are other artifacts of the release: name -> content.
	Files map[string][]byte
}

// New makes the predicate of a release.
func New(r Release) (*Predicate, error) {
	if r.Stamp.Commit == "" || len(r.Stamp.Commit) != 40 {
		return nil, fmt.Errorf("commit %q is not a full git commit hash: provenance needs a --stamp build", r.Stamp.Commit)
	}
	if len(r.Command) == 0 {
		return nil, fmt.Errorf("no build command")
	}
	deps := []ResourceDescriptor{{
		Name:   "source",
		URI:    "git+" + r.Repository + "@" + r.Stamp.Commit,
		Digest: map[string]string{"gitCommit": r.Stamp.Commit},
	}}
	mods, err := goModules(r.GoMod, r.GoSum)
	if err != nil {
		return nil, err
	}
	deps = append(deps, mods...)
	for _, p := range r.Debian.Packages {
		deps = append(deps, ResourceDescriptor{
			URI:    fmt.Sprintf("pkg:deb/debian/%s@%s?arch=%s", p.Name, p.Version, p.Architecture),
			Digest: map[string]string{"sha256": p.SHA256},
		})
	}
	var byproducts []ResourceDescriptor
	for _, name := range sortedKeys(r.Images) {
		alg, hex, ok := strings.Cut(r.Images[name], ":")
		if !ok {
			return nil, fmt.Errorf("image %s: digest %q is not ALG:HEX", name, r.Images[name])
		}
		byproducts = append(byproducts, ResourceDescriptor{Name: name, Digest: map[string]string{alg: hex}})
	}
	for _, name := range sortedKeys(r.Files) {
		sum := sha256.Sum256(r.Files[name])
		byproducts = append(byproducts, ResourceDescriptor{Name: name, Digest: map[string]string{"sha256": hex.EncodeToString(sum[:])}})
	}
	return &Predicate{
		BuildDefinition: BuildDefinition{
			BuildType: BuildType,
			ExternalParameters: ExternalParameters{
				Source:          "git+" + r.Repository + "@" + r.Stamp.Commit,
				Version:         r.Stamp.Version,
				Command:         r.Command,
				SourceDateEpoch: r.Stamp.Epoch,
			},
			ResolvedDependencies: deps,
		},
		RunDetails: RunDetails{
			Builder:    Builder{ID: r.BuilderID, Version: r.BuilderVersion},
			Metadata:   Metadata{InvocationID: r.InvocationID, StartedOn: r.Started.UTC(), FinishedOn: r.Finished.UTC()},
			Byproducts: byproducts,
		},
	}, nil
}

// goModules lists every module go.mod requires, the module graph the build
// resolves, with its go.sum hash as an in-toto dirHash (the h1: hash in hex).
func goModules(goMod, goSum []byte) ([]ResourceDescriptor, error) {
	mod, err := gomod.Parse(goMod)
	if err != nil {
		return nil, err
	}
	sums, err := gomod.Sums(goSum)
	if err != nil {
		return nil, err
	}
	var out []ResourceDescriptor
	for _, path := range mod.Modules() {
		v := mod.Versions[path]
		h1, ok := sums[path+"@"+v]
		if !ok {
			return nil, fmt.Errorf("go.sum has no hash for %s %s", path, v)
		}
		raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(h1, "h1:"))
		if err != nil || !strings.HasPrefix(h1, "h1:") || len(raw) != sha256.Size {
			return nil, fmt.Errorf("go.sum: %s %s: hash %q is not h1:BASE64(SHA-256)", path, v, h1)
		}
		out = append(out, ResourceDescriptor{
			URI:    fmt.Sprintf("pkg:golang/%s@%s", path, v),
			Digest: map[string]string{"dirHash": hex.EncodeToString(raw)},
		})
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Write writes the predicate as indented JSON.
func (p *Predicate) Write(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(p)
}
