// Package sbom writes an SPDX 2.3 SBOM of the release image from what the
// build already knows exactly: the Go module list each binary embeds
// (debug/buildinfo) and the pinned Debian packages of the base. No scanner
// runs, so the same inputs always give the same document.
package sbom

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	spdxjson "github.com/spdx/tools-golang/json"
	"github.com/spdx/tools-golang/spdx/v2/common"
	spdx "github.com/spdx/tools-golang/spdx/v2/v2_3"
)

// Binary is a Go executable in the image.
type Binary struct {
	Path string // in the image
	Data []byte
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
}

const noAssertion = "NOASSERTION"

type goModule struct{ path, version string }

// Write writes the SPDX JSON document for img.
func Write(w io.Writer, img Image) error {
	if len(img.Binaries) == 0 {
		return fmt.Errorf("no binaries")
	}
	bins := append([]Binary(nil), img.Binaries...)
	sort.Slice(bins, func(i, j int) bool { return bins[i].Path < bins[j].Path })
	infos := make([]*debug.BuildInfo, len(bins))
	for i, b := range bins {
		bi, err := buildinfo.Read(bytes.NewReader(b.Data))
		if err != nil {
			return fmt.Errorf("%s: no Go build info: %w", b.Path, err)
		}
		infos[i] = bi
	}
	doc, err := document(img, bins, infos)
	if err != nil {
		return err
	}
	return spdxjson.Write(doc, w, spdxjson.Indent("  "))
}

// document builds the SPDX document; infos[i] is the build info of bins[i].
func document(img Image, bins []Binary, infos []*debug.BuildInfo) (*spdx.Document, error) {
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
	mainPath := ""
	for i, b := range bins {
		bi := infos[i]
		// Binaries built from a work tree carry no module version of their
		// own; they come from the same source revision as the image.
		version := bi.Main.Version
		if version == "" || version == "(devel)" {
			version = img.Version
		}
		if mainPath == "" {
			mainPath = bi.Main.Path
		}
		sum := sha256.Sum256(b.Data)
		fmt.Fprintf(ns, "%s %x\n", b.Path, sum)
		id := common.ElementID(fmt.Sprintf("Package-binary-%d", i))
		doc.Packages = append(doc.Packages, &spdx.Package{
			PackageName:             path.Base(b.Path),
			PackageSPDXIdentifier:   id,
			PackageVersion:          version,
			PackageFileName:         b.Path,
			PackageDownloadLocation: noAssertion,
			PackageChecksums:        []common.Checksum{{Algorithm: common.SHA256, Value: hex.EncodeToString(sum[:])}},
			PackageLicenseConcluded: noAssertion,
			PackageLicenseDeclared:  licenses,
			PackageCopyrightText:    noAssertion,
			PackageComment:          "Go package " + bi.Path + " of module " + bi.Main.Path,
			PrimaryPackagePurpose:   "APPLICATION",
			PackageExternalReferences: []*spdx.PackageExternalReference{
				purl(fmt.Sprintf("pkg:golang/%s@%s", bi.Main.Path, version)),
			},
		})
		doc.Relationships = append(doc.Relationships, rel(rootID, id, "CONTAINS"))

		mods := []goModule{{"stdlib", strings.TrimPrefix(bi.GoVersion, "go")}}
		for _, d := range bi.Deps {
			if d.Replace != nil {
				d = d.Replace
			}
			mods = append(mods, goModule{d.Path, d.Version})
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
		doc.Packages = append(doc.Packages, &spdx.Package{
			PackageName:               m.path,
			PackageSPDXIdentifier:     modID[m],
			PackageVersion:            m.version,
			PackageDownloadLocation:   noAssertion,
			PackageLicenseConcluded:   noAssertion,
			PackageLicenseDeclared:    noAssertion,
			PackageCopyrightText:      noAssertion,
			PrimaryPackagePurpose:     "LIBRARY",
			PackageExternalReferences: []*spdx.PackageExternalReference{purl(fmt.Sprintf("pkg:golang/%s@%s", m.path, m.version))},
		})
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
	if mainPath == "" {
		return nil, fmt.Errorf("binaries name no main module")
	}
	doc.DocumentNamespace = fmt.Sprintf("https://%s/spdx/%s-%s-%x", mainPath, img.Name, img.Version, ns.Sum(nil)[:16])
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
