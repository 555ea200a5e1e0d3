package provenance

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cmdkms/kms/release/imagebuilder"
)

const commit = "0123456789abcdef0123456789abcdef01234567"

func testRelease() Release {
	return Release{
		Repository: "https://github.com/cmdkms/kms",
		Stamp:      imagebuilder.Stamp{Version: "v1.2.3", Commit: commit, Epoch: 1795714769},
		Command:    []string{"tools/bazel", "build", "--stamp", "//release:image"},
		GoMod:      []byte("module github.com/cmdkms/kms\n\nrequire github.com/marklodato/go-hello-world v0.0.1\n"),
		// The example of the in-toto digest set specification.
		GoSum: []byte("github.com/marklodato/go-hello-world v0.0.1 h1:Khu2En+0gcYPZ2kuIihfswbzxv/mIHXgzPZ018Oty48=\n" +
			"github.com/marklodato/go-hello-world v0.0.1/go.mod h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"),
		Debian: &imagebuilder.Lock{Packages: []imagebuilder.LockedPackage{
			{Name: "tzdata", Version: "2026b-0+deb12u1", Architecture: "all", SHA256: strings.Repeat("ab", 32)},
		}},
		BuilderID:      "https://github.com/cmdkms/kms/blob/main/release/release.sh",
		BuilderVersion: map[string]string{"go": "go1.26.8"},
		Started:        time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Finished:       time.Date(2026, 1, 2, 3, 14, 5, 0, time.UTC),
		Images:         map[string]string{"image linux/arm64": "sha256:" + strings.Repeat("2", 64), "image linux/amd64": "sha256:" + strings.Repeat("1", 64)},
		Files:          map[string][]byte{"linux-amd64/kms": []byte("binary")},
	}
}

func TestPredicate(t *testing.T) {
	p, err := New(testRelease())
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := p.Write(&b); err != nil {
		t.Fatal(err)
	}
	// Read back as plain JSON: the field names are what SLSA v1 defines.
	var got struct {
		BuildDefinition struct {
			BuildType          string `json:"buildType"`
			ExternalParameters struct {
				Source  string   `json:"source"`
				Command []string `json:"command"`
			} `json:"externalParameters"`
			ResolvedDependencies []map[string]any `json:"resolvedDependencies"`
		} `json:"buildDefinition"`
		RunDetails struct {
			Builder struct {
				ID string `json:"id"`
			} `json:"builder"`
			Metadata struct {
				StartedOn  string `json:"startedOn"`
				FinishedOn string `json:"finishedOn"`
			} `json:"metadata"`
			Byproducts []struct {
				Name   string            `json:"name"`
				Digest map[string]string `json:"digest"`
			} `json:"byproducts"`
		} `json:"runDetails"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	bd := got.BuildDefinition
	if bd.BuildType != BuildType || bd.ExternalParameters.Source != "git+https://github.com/cmdkms/kms@"+commit ||
		strings.Join(bd.ExternalParameters.Command, " ") != "tools/bazel build --stamp //release:image" {
		t.Errorf("build definition: %+v", bd)
	}
	deps, _ := json.Marshal(bd.ResolvedDependencies)
	for _, want := range []string{
		`{"digest":{"gitCommit":"` + commit + `"},"name":"source","uri":"git+https://github.com/cmdkms/kms@` + commit + `"}`,
		`{"digest":{"dirHash":"2a1bb6127fb481c60f67692e22285fb306f3c6ffe62075e0ccf674d7c3adcb8f"},"uri":"pkg:golang/github.com/marklodato/go-hello-world@v0.0.1"}`,
		`{"digest":{"sha256":"` + strings.Repeat("ab", 32) + `"},"uri":"pkg:deb/debian/tzdata@2026b-0+deb12u1?arch=all"}`,
	} {
		if !strings.Contains(string(deps), want) {
			t.Errorf("resolvedDependencies lack %s:\n%s", want, deps)
		}
	}
	rd := got.RunDetails
	if rd.Builder.ID != "https://github.com/cmdkms/kms/blob/main/release/release.sh" ||
		rd.Metadata.StartedOn != "2026-01-02T03:04:05Z" || rd.Metadata.FinishedOn != "2026-01-02T03:14:05Z" {
		t.Errorf("run details: %+v", rd)
	}
	var names []string
	for _, bp := range rd.Byproducts {
		names = append(names, bp.Name)
	}
	if strings.Join(names, ",") != "image linux/amd64,image linux/arm64,linux-amd64/kms" ||
		rd.Byproducts[0].Digest["sha256"] != strings.Repeat("1", 64) ||
		rd.Byproducts[2].Digest["sha256"] != "9a3a45d01531a20e89ac6ae10b0b0beb0492acd7216a368aa062d1a5fecaf9cd" {
		t.Errorf("byproducts: %+v", rd.Byproducts)
	}
}

func TestRefusals(t *testing.T) {
	for name, mod := range map[string]func(*Release){
		"unstamped":      func(r *Release) { r.Stamp.Commit = "unknown" },
		"no command":     func(r *Release) { r.Command = nil },
		"module unsumed": func(r *Release) { r.GoSum = r.GoSum[strings.IndexByte(string(r.GoSum), '\n')+1:] },
		"bad image hash": func(r *Release) { r.Images["image linux/amd64"] = "1111" },
	} {
		r := testRelease()
		mod(&r)
		if _, err := New(r); err == nil {
			t.Errorf("%s: made a predicate anyway", name)
		}
	}
}
