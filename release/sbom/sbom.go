// Package sbom writes an SPDX 2.3 SBOM of the release image from what the
// build already knows exactly: the Go packages linked into each binary (Bazel
// knows them; rules_go embeds no module list in debug/buildinfo, only the Go
// version), the module versions go.mod selects for them, and the pinned
// Debian packages of the base. No scanner runs, so the same inputs always
// give the same document.
package sbom

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	spdxjson "github.com/spdx/tools-golang/json"
	"github.com/spdx/tools-golang/spdx/v2/common"
	spdx "github.com/spdx/tools-golang/spdx/v2/v2_3"

	"github.com/cmdkms/kms/release/gomod"
)

// Binary is a Go executable in the image of one platform.
type Binary struct {
	Arch string // the image's architecture: linux/ARCH
	Path string // in the image
	Data []byte
	// Packages are the import paths linked into it, standard library excluded.
	Packages []string
}

// DebPackage is a Debian package the base was made from.
type DebPackage struct {
	Name, Version, Architecture, SHA256 string
}

// Image describes what the SBOM is about.
type Image struct {
	Name     string
	Version  string
	Licenses string // SPDX expression for the project's own code
	Created  time.Time
	Binaries []Binary
	Debs     []DebPackage
	GoMod    []byte // the main module's go.mod
}

const noAssertion = "NOASSERTION"

type goModule struct{ path, version string }

// Write writes the SPDX JSON document for img.
func Write(w io.Writer, img Image) error {
	doc, err := document(img)
	if err != nil {
		return err
	}
	return spdxjson.Write(doc, w, spdxjson.Indent("  "))
}

func document(img Image) (*spdx.Document, error) {
	if len(img.Binaries) == 0 {
		return nil, fmt.Errorf("no binaries")
	}
	mod, err := gomod.Parse(img.GoMod)
	if err != nil {
		return nil, err
	}
	bins := append([]Binary(nil), img.Binaries...)
	sort.Slice(bins, func(i, j int) bool {
		if bins[i].Arch != bins[j].Arch {
			return bins[i].Arch < bins[j].Arch
		}
		return bins[i].Path < bins[j].Path
	})
	debs := append([]DebPackage(nil), img.Debs...)
	sort.Slice(debs, func(i, j int) bool { return debs[i].Name < debs[j].Name })

	rootID := common.ElementID("Package-image")
	licenses := img.Licenses
	if licenses == "" {
		licenses = noAssertion
	}
	doc := &spdx.Document{
		SPDXVersion:    spdx.Version,
		DataLicense:    spdx.DataLicense,
		SPDXIdentifier: "DOCUMENT",
		DocumentName:   img.Name + "-" + img.Version,
		CreationInfo: &spdx.CreationInfo{
			Creators: []common.Creator{{CreatorType: "Tool", Creator: "kms-release-imagebuilder"}},
			Created:  img.Created.UTC().Format(time.RFC3339),
		},
		Packages: []*spdx.Package{{
			PackageName:             img.Name,
			PackageSPDXIdentifier:   rootID,
			PackageVersion:          img.Version,
			PackageDownloadLocation: noAssertion,
			PackageLicenseConcluded: noAssertion,
			PackageLicenseDeclared:  licenses,
			PackageCopyrightText:    noAssertion,
			PrimaryPackagePurpose:   "CONTAINER",
		}},
		Relationships: []*spdx.Relationship{rel("DOCUMENT", rootID, "DESCRIBES")},
	}

	// The namespace must be unique per document; deriving it from the
	// content keeps it stable for identical builds.
	ns := sha256.New()
	modID := map[goModule]common.ElementID{}
	var modOrder []goModule
	for i, b := range bins {
		if b.Arch == "" {
			return nil, fmt.Errorf("%s: no architecture", b.Path)
		}
		bi, err := buildinfo.Read(bytes.NewReader(b.Data))
		if err != nil {
			return nil, fmt.Errorf("%s: not a Go binary: %w", b.Path, err)
		}
		sum := sha256.Sum256(b.Data)
		fmt.Fprintf(ns, "%s %s %x\n", b.Arch, b.Path, sum)
		id := common.ElementID(fmt.Sprintf("Package-binary-%d", i))
		doc.Packages = append(doc.Packages, &spdx.Package{
			PackageName:             path.Base(b.Path),
			PackageSPDXIdentifier:   id,
			PackageVersion:          img.Version,
			PackageFileName:         b.Path,
			PackageDownloadLocation: noAssertion,
			PackageChecksums:        []common.Checksum{{Algorithm: common.SHA256, Value: hex.EncodeToString(sum[:])}},
			PackageLicenseConcluded: noAssertion,
			PackageLicenseDeclared:  licenses,
			PackageCopyrightText:    noAssertion,
			PackageComment:          fmt.Sprintf("Go binary of module %s, in the linux/%s image", mod.Main, b.Arch),
			PrimaryPackagePurpose:   "APPLICATION",
			PackageExternalReferences: []*spdx.PackageExternalReference{
				purl(fmt.Sprintf("pkg:golang/%s@%s", mod.Main, img.Version)),
			},
		})
		doc.Relationships = append(doc.Relationships, rel(rootID, id, "CONTAINS"))

		mods := []goModule{{"stdlib", strings.TrimPrefix(bi.GoVersion, "go")}}
		seen := map[goModule]bool{}
		pkgs := append([]string(nil), b.Packages...)
		sort.Strings(pkgs)
		for _, p := range pkgs {
			if mod.IsMain(p) {
				continue
			}
			m := goModule{path: p}
			if mp, v, ok := mod.ModuleOf(p); ok {
				m = goModule{mp, v}
			}
			if !seen[m] {
				seen[m] = true
				mods = append(mods, m)
			}
		}
		for _, m := range mods {
			mid, ok := modID[m]
			if !ok {
				mid = common.ElementID(fmt.Sprintf("Package-go-%d", len(modID)))
				modID[m] = mid
				modOrder = append(modOrder, m)
			}
			doc.Relationships = append(doc.Relationships, rel(id, mid, "DEPENDS_ON"))
		}
	}
	for _, m := range modOrder {
		pkg := &spdx.Package{
			PackageName:             m.path,
			PackageSPDXIdentifier:   modID[m],
			PackageVersion:          m.version,
			PackageDownloadLocation: noAssertion,
			PackageLicenseConcluded: noAssertion,
			PackageLicenseDeclared:  noAssertion,
			PackageCopyrightText:    noAssertion,
			PrimaryPackagePurpose:   "LIBRARY",
		}
		if m.version == "" {
			// Bazel can link packages that go.mod does not list (rules_go's
			// proto support adds github.com/golang/protobuf); their version is
			// go_deps' choice, which no input of this step records.
			pkg.PackageVersion = noAssertion
			pkg.PackageComment = "Go package linked by Bazel from a module go.mod does not require; version not recorded"
		} else {
			pkg.PackageExternalReferences = []*spdx.PackageExternalReference{purl(fmt.Sprintf("pkg:golang/%s@%s", m.path, m.version))}
		}
		doc.Packages = append(doc.Packages, pkg)
	}
	for i, d := range debs {
		fmt.Fprintf(ns, "deb %s %s\n", d.Name, d.SHA256)
		id := common.ElementID(fmt.Sprintf("Package-deb-%d", i))
		doc.Packages = append(doc.Packages, &spdx.Package{
			PackageName:               d.Name,
			PackageSPDXIdentifier:     id,
			PackageVersion:            d.Version,
			PackageDownloadLocation:   noAssertion,
			PackageChecksums:          []common.Checksum{{Algorithm: common.SHA256, Value: d.SHA256}},
			PackageLicenseConcluded:   noAssertion,
			PackageLicenseDeclared:    noAssertion,
			PackageCopyrightText:      noAssertion,
			PackageComment:            "Debian package (.deb checksum); only its data files are in the image, its copyright file under /usr/share/doc",
			PrimaryPackagePurpose:     "LIBRARY",
			PackageExternalReferences: []*spdx.PackageExternalReference{purl(fmt.Sprintf("pkg:deb/debian/%s@%s?arch=%s", d.Name, d.Version, d.Architecture))},
		})
		doc.Relationships = append(doc.Relationships, rel(rootID, id, "CONTAINS"))
	}
	doc.DocumentNamespace = fmt.Sprintf("https://%s/spdx/%s-%s-%x", mod.Main, img.Name, img.Version, ns.Sum(nil)[:16])
	return doc, nil
}

func purl(locator string) *spdx.PackageExternalReference {
	return &spdx.PackageExternalReference{Category: "PACKAGE-MANAGER", RefType: "purl", Locator: locator}
}

func rel(a, b common.ElementID, kind string) *spdx.Relationship {
	return &spdx.Relationship{
		RefA:         common.MakeDocElementID("", string(a)),
		RefB:         common.MakeDocElementID("", string(b)),
		Relationship: kind,
	}
}
