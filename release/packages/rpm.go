package packages

import (
	"bytes"
	"strings"

	"github.com/google/rpmpack"
)

// rpmRelease is the RPM release: the packaging of one version changes only
// with the version.
const rpmRelease = "1"

// RPM returns the .rpm. Files under /usr/share/doc are marked %doc. There
// is no %config file: the package installs nothing under /etc (drop-ins and
// the keyring there are the operator's).
func (p Package) RPM() ([]byte, error) {
	_, rpmArch, err := p.arch()
	if err != nil {
		return nil, err
	}
	entries, err := p.entries()
	if err != nil {
		return nil, err
	}
	r, err := rpmpack.NewRPM(rpmpack.RPMMetaData{
		Name:        Name,
		Summary:     summary,
		Description: description,
		Version:     PackageVersion(p.Version),
		Release:     rpmRelease,
		Epoch:       rpmpack.NoEpoch,
		Arch:        rpmArch,
		URL:         homepage,
		Packager:    maintainer,
		Vendor:      "cmdkms",
		Group:       "System Environment/Daemons",
		Licence:     license,
		BuildHost:   "reproducible",
		BuildTime:   p.Time,
		Compressor:  "gzip:9",
	})
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		// The system's directories (/usr/bin, ...) belong to its filesystem
		// package; this one owns only its own.
		if e.dir && !ownDir(e.path) {
			continue
		}
		f := rpmpack.RPMFile{
			Name:  e.path,
			Body:  e.data,
			Mode:  uint(e.mode.Perm()) | 0o100000,
			Owner: "root",
			Group: "root",
			MTime: uint32(p.Time.Unix()),
		}
		if e.dir {
			f.Mode = uint(e.mode.Perm()) | 0o040000
		}
		if strings.HasPrefix(e.path, "/usr/share/doc/") {
			f.Type = rpmpack.DocFile
		}
		r.AddFile(f)
	}
	// The changelog (RPMTAG_CHANGELOGTIME, NAME, TEXT), one entry as in the .deb.
	r.AddCustomTag(1080, rpmpack.EntryInt32([]int32{int32(p.Time.Unix())}))
	r.AddCustomTag(1081, rpmpack.EntryStringSlice([]string{maintainer + " - " + PackageVersion(p.Version) + "-" + rpmRelease}))
	r.AddCustomTag(1082, rpmpack.EntryStringSlice([]string{"- Release " + p.Version + " of kms."}))
	r.AddPostin(rpmPost)
	r.AddPreun(rpmPreun)
	r.AddPostun(rpmPostun)
	var buf bytes.Buffer
	if err := r.Write(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
