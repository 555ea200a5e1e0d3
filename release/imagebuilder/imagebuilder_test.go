package imagebuilder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/ulikunitz/xz"
)

// fakeELF returns a minimal ELF64 executable header for machine, with a
// PT_INTERP program header when dynamic is set.
func fakeELF(t *testing.T, machine elf.Machine, dynamic bool) []byte {
	t.Helper()
	progs := []elf.Prog64{{Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R | elf.PF_X)}}
	if dynamic {
		progs = append(progs, elf.Prog64{Type: uint32(elf.PT_INTERP)})
	}
	h := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
		Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: uint16(len(progs)),
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, h); err != nil {
		t.Fatal(err)
	}
	if err := binary.Write(&buf, binary.LittleEndian, progs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type tfile struct {
	name, body, link string
}

// fakeDeb returns a .deb (ar archive) whose data.tar.xz holds files, with
// the "./" names and root/root owners dpkg-deb writes.
func fakeDeb(t *testing.T, files []tfile) []byte {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, f := range files {
		h := &tar.Header{Name: "./" + f.name, Mode: 0o644, Uname: "root", Gname: "root", ModTime: time.Unix(1700000000, 0)}
		switch {
		case strings.HasSuffix(f.name, "/"):
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case f.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, f.body)
	}
	tw.Close()
	var xb bytes.Buffer
	xw, err := xz.NewWriter(&xb)
	if err != nil {
		t.Fatal(err)
	}
	xw.Write(tb.Bytes())
	xw.Close()

	var ar bytes.Buffer
	ar.WriteString("!<arch>\n")
	for _, m := range []struct {
		name string
		data []byte
	}{{"debian-binary", []byte("2.0\n")}, {"control.tar.xz", []byte("x")}, {"data.tar.xz", xb.Bytes()}} {
		fmt.Fprintf(&ar, "%-16s%-12d%-6d%-6d%-8s%-10d`\n", m.name, 0, 0, 0, "100644", len(m.data))
		ar.Write(m.data)
		if len(m.data)%2 == 1 {
			ar.WriteByte('\n')
		}
	}
	return ar.Bytes()
}

const (
	certA = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
	certB = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----" // no final newline
)

func testDebs(t *testing.T) []Deb {
	ca := fakeDeb(t, []tfile{
		{name: "usr/"}, {name: "usr/sbin/update-ca-certificates", body: "#!/bin/sh\n"},
		{name: "usr/share/ca-certificates/mozilla/B.crt", body: certB},
		{name: "usr/share/ca-certificates/mozilla/A.crt", body: certA},
		{name: "usr/share/doc/ca-certificates/copyright", body: "ca copyright\n"},
	})
	tz := fakeDeb(t, []tfile{
		{name: "usr/share/zoneinfo/"}, {name: "usr/share/zoneinfo/Etc/UTC", body: "TZif-utc"},
		{name: "usr/share/zoneinfo/UTC", link: "Etc/UTC"},
		{name: "usr/share/doc/tzdata/copyright", body: "tz copyright\n"},
		{name: "usr/share/lintian/overrides/tzdata", body: "x"},
	})
	return []Deb{
		{LockedPackage: LockedPackage{Name: "ca-certificates", Version: "1"}, Data: ca},
		{LockedPackage: LockedPackage{Name: "tzdata", Version: "2"}, Data: tz},
	}
}

// spec is everything one test image is made from.
type spec struct {
	debs       []Deb
	bins       []Binary
	entrypoint []string
	created    time.Time
	anns       map[string]string
}

func testSpec(t *testing.T) spec {
	return spec{
		debs: testDebs(t),
		bins: []Binary{
			{Path: "/usr/bin/kms", Data: fakeELF(t, elf.EM_X86_64, false)},
			{Path: "/usr/bin/kek-file", Data: append(fakeELF(t, elf.EM_X86_64, false), 1)},
		},
		entrypoint: []string{"/usr/bin/kms"},
		created:    time.Unix(1795714769, 0),
		anns:       map[string]string{AnnotationVersion: "v1.2.3", AnnotationRevision: "abc"},
	}
}

// build runs the steps the Bazel rules run: base layer, binary layer, image.
func build(s spec) (v1.Image, error) {
	base, baseInfo, err := BaseLayer(s.debs, s.created)
	if err != nil {
		return nil, err
	}
	app, appInfo, err := BinaryLayer(s.bins, s.created)
	if err != nil {
		return nil, err
	}
	return Image(ImageOptions{
		Layers:      []Layer{{base, baseInfo}, {app, appInfo}},
		Entrypoint:  s.entrypoint,
		Created:     s.created,
		Annotations: s.anns,
	})
}

// digest is the digest of an image or an index.
func digest(t *testing.T, d interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestReproducible(t *testing.T) {
	a, err := build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, a) != digest(t, b) {
		t.Fatalf("two builds differ: %v %v", digest(t, a), digest(t, b))
	}
	o := testSpec(t)
	o.created = o.created.Add(time.Second)
	c, err := build(o)
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, a) == digest(t, c) {
		t.Fatal("a different creation time gave the same digest")
	}
}

type entry struct {
	h    *tar.Header
	body string
}

func layerEntries(t *testing.T, l v1.Layer) []entry {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("gzip header has name %q mtime %v", zr.Name, zr.ModTime)
	}
	tr := tar.NewReader(zr)
	var out []entry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out = append(out, entry{h, string(b)})
	}
}

func TestContents(t *testing.T) {
	o := testSpec(t)
	img, err := build(o)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers: %d %v", len(layers), err)
	}
	byName := map[string]*tar.Header{}
	bodies := map[string]string{}
	for i, l := range layers {
		mt, _ := l.MediaType()
		if mt != types.OCILayer {
			t.Errorf("layer %d media type %s", i, mt)
		}
		prev := ""
		for _, e := range layerEntries(t, l) {
			if e.h.Name <= prev {
				t.Errorf("layer %d: %q after %q: not sorted", i, e.h.Name, prev)
			}
			prev = e.h.Name
			if !e.h.ModTime.Equal(o.created) || e.h.Uname != "" || e.h.Gname != "" {
				t.Errorf("%s: mtime %v uname %q gname %q", e.h.Name, e.h.ModTime, e.h.Uname, e.h.Gname)
			}
			byName[e.h.Name] = e.h
			bodies[e.h.Name] = e.body
		}
	}
	want := map[string]struct {
		typ      byte
		mode     int64
		uid, gid int
	}{
		"etc/passwd":                     {tar.TypeReg, 0o644, 0, 0},
		"etc/group":                      {tar.TypeReg, 0o644, 0, 0},
		"etc/nsswitch.conf":              {tar.TypeReg, 0o644, 0, 0},
		"home/nonroot/":                  {tar.TypeDir, 0o700, 65532, 65532},
		"root/":                          {tar.TypeDir, 0o700, 0, 0},
		"tmp/":                           {tar.TypeDir, 0o1777, 0, 0},
		"etc/ssl/certs/":                 {tar.TypeDir, 0o755, 0, 0},
		CABundle:                         {tar.TypeReg, 0o644, 0, 0},
		"usr/share/zoneinfo/UTC":         {tar.TypeSymlink, 0o777, 0, 0},
		"usr/share/zoneinfo/Etc/UTC":     {tar.TypeReg, 0o644, 0, 0},
		"usr/bin/kms":                    {tar.TypeReg, 0o755, 0, 0},
		"usr/bin/kek-file":               {tar.TypeReg, 0o755, 0, 0},
		"usr/share/doc/tzdata/copyright": {tar.TypeReg, 0o644, 0, 0},
	}
	for name, w := range want {
		h, ok := byName[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if h.Typeflag != w.typ || h.Mode != w.mode || h.Uid != w.uid || h.Gid != w.gid {
			t.Errorf("%s: type %c mode %o %d:%d, want %c %o %d:%d", name, h.Typeflag, h.Mode, h.Uid, h.Gid, w.typ, w.mode, w.uid, w.gid)
		}
	}
	if got := byName["usr/share/zoneinfo/UTC"].Linkname; got != "Etc/UTC" {
		t.Errorf("UTC links to %q", got)
	}
	if got, want := bodies[CABundle], certA+certB+"\n"; got != want {
		t.Errorf("CA bundle %q, want %q", got, want)
	}
	if !strings.Contains(bodies["etc/passwd"], "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n") ||
		!strings.Contains(bodies["etc/group"], "nonroot:x:65532:\n") {
		t.Errorf("passwd/group lack nonroot:\n%s%s", bodies["etc/passwd"], bodies["etc/group"])
	}
	for _, banned := range []string{"bin/sh", "usr/sbin/update-ca-certificates", "usr/share/lintian/overrides/tzdata"} {
		if _, ok := byName[banned]; ok {
			t.Errorf("%s must not be in the image", banned)
		}
	}
}

func TestConfigAndManifest(t *testing.T) {
	img, err := build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || strings.Join(cf.Config.Entrypoint, " ") != "/usr/bin/kms" ||
		cf.Architecture != "amd64" || cf.OS != "linux" || cf.Created.Unix() != 1795714769 {
		t.Errorf("config: %+v", cf)
	}
	if cf.RootFS.Type != "layers" || len(cf.RootFS.DiffIDs) != 2 || len(cf.History) != 2 {
		t.Errorf("rootfs %v history %v", cf.RootFS.DiffIDs, cf.History)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("media types %s %s", m.MediaType, m.Config.MediaType)
	}
	for k, v := range map[string]string{
		AnnotationVersion: "v1.2.3", AnnotationRevision: "abc", AnnotationCreated: "2026-11-26T17:39:29Z",
	} {
		if m.Annotations[k] != v || cf.Config.Labels[k] != v {
			t.Errorf("%s: manifest %q label %q, want %q", k, m.Annotations[k], cf.Config.Labels[k], v)
		}
	}
}

func TestRefusals(t *testing.T) {
	for name, mod := range map[string]func(*spec){
		"dynamic binary":       func(o *spec) { o.bins[0].Data = fakeELF(t, elf.EM_X86_64, true) },
		"mixed architectures":  func(o *spec) { o.bins[1].Data = fakeELF(t, elf.EM_AARCH64, false) },
		"not ELF":              func(o *spec) { o.bins[1].Data = []byte("#!/bin/sh\n") },
		"entrypoint not given": func(o *spec) { o.entrypoint = []string{"/bin/sh"} },
		"no entrypoint":        func(o *spec) { o.entrypoint = nil },
		"unknown package":      func(o *spec) { o.debs[0].Name = "bash" },
		"missing package":      func(o *spec) { o.debs = o.debs[:1] },
		"relative path":        func(o *spec) { o.bins[0].Path = "usr/bin/kms" },
		"duplicate path":       func(o *spec) { o.bins[1].Path = "/usr/bin/kms" },
	} {
		o := testSpec(t)
		mod(&o)
		if _, err := build(o); err == nil {
			t.Errorf("%s: built anyway", name)
		}
	}
	// Two binary layers must agree on the architecture.
	o := testSpec(t)
	amd, amdInfo, err := BinaryLayer(o.bins[:1], o.created)
	if err != nil {
		t.Fatal(err)
	}
	arm, armInfo, err := BinaryLayer([]Binary{{Path: "/usr/bin/other", Data: fakeELF(t, elf.EM_AARCH64, false)}}, o.created)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Image(ImageOptions{Layers: []Layer{{amd, amdInfo}, {arm, armInfo}}, Entrypoint: o.entrypoint}); err == nil {
		t.Error("mixed-architecture layers accepted")
	}
}

func TestLockMatch(t *testing.T) {
	dir := t.TempDir()
	debs := testDebs(t)
	var l Lock
	var paths []string
	for _, d := range debs {
		sum := sha256.Sum256(d.Data)
		l.Packages = append(l.Packages, LockedPackage{Name: d.Name, Version: d.Version, SHA256: hex.EncodeToString(sum[:])})
		p := filepath.Join(dir, d.Name+".deb")
		os.WriteFile(p, d.Data, 0o644)
		paths = append(paths, p)
	}
	got, err := l.MatchDebs([]string{paths[1], paths[0]})
	if err != nil || len(got) != 2 {
		t.Fatalf("match: %v %v", got, err)
	}
	if _, err := l.MatchDebs(paths[:1]); err == nil {
		t.Error("a missing package was accepted")
	}
	os.WriteFile(paths[0], append(debs[0].Data, 0), 0o644)
	if _, err := l.MatchDebs(paths); err == nil || !strings.Contains(err.Error(), "not in the lock") {
		t.Errorf("a modified package was accepted: %v", err)
	}
}

// testIndex builds the images of two platforms from one spec, as the
// release's BUILD file does, and puts them in an index.
func testIndex(t *testing.T) (v1.ImageIndex, []v1.Image) {
	t.Helper()
	var imgs []v1.Image
	for _, machine := range []elf.Machine{elf.EM_X86_64, elf.EM_AARCH64} {
		o := testSpec(t)
		for i := range o.bins {
			o.bins[i].Data = append(fakeELF(t, machine, false), byte(i))
		}
		img, err := build(o)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	idx, err := Index(imgs)
	if err != nil {
		t.Fatal(err)
	}
	return idx, imgs
}

func TestIndex(t *testing.T) {
	idx, imgs := testIndex(t)
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIImageIndex || len(m.Manifests) != 2 ||
		m.Annotations[AnnotationVersion] != "v1.2.3" || m.Annotations[AnnotationCreated] != "2026-11-26T17:39:29Z" {
		t.Fatalf("index manifest %+v", m)
	}
	for i, arch := range []string{"amd64", "arm64"} {
		d := m.Manifests[i]
		if d.Digest != digest(t, imgs[i]) || d.Platform == nil || d.Platform.String() != "linux/"+arch || len(d.Annotations) != 0 {
			t.Errorf("entry %d: %+v, want linux/%s %s", i, d, arch, digest(t, imgs[i]))
		}
		img, err := PlatformImage(idx, arch)
		if err != nil || digest(t, img) != digest(t, imgs[i]) {
			t.Errorf("PlatformImage(%s): %v", arch, err)
		}
	}
	if _, err := PlatformImage(idx, "s390x"); err == nil {
		t.Error("found an s390x image")
	}
	again, _ := testIndex(t)
	if d1, d2 := digest(t, idx), digest(t, again); d1 != d2 {
		t.Errorf("two indexes of the same images differ: %s %s", d1, d2)
	}
	if _, err := Index([]v1.Image{imgs[0], imgs[0]}); err == nil {
		t.Error("an index with one platform twice was made")
	}
	o := testSpec(t)
	o.anns[AnnotationRevision] = "other"
	other, err := build(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Index([]v1.Image{other, imgs[1]}); err == nil {
		t.Error("an index of images of two builds (different annotations) was made")
	}
}

// A base layer from packages built for one machine only goes under binaries
// of that machine.
func TestBaseArchitecture(t *testing.T) {
	o := testSpec(t)
	o.debs[1].Architecture = "arm64"
	if _, err := build(o); err == nil || !strings.Contains(err.Error(), "mix architectures") {
		t.Errorf("an arm64 base under amd64 binaries: %v", err)
	}
	for i := range o.bins {
		o.bins[i].Data = append(fakeELF(t, elf.EM_AARCH64, false), byte(i))
	}
	if _, err := build(o); err != nil {
		t.Errorf("an arm64 base under arm64 binaries: %v", err)
	}
}

func TestLayoutAndArchive(t *testing.T) {
	idx, _ := testIndex(t)
	var archives [2][]byte
	for i := range archives {
		dir := filepath.Join(t.TempDir(), "layout")
		if err := WriteLayout(dir, idx, "kms:v1.2.3"); err != nil {
			t.Fatal(err)
		}
		top, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			t.Fatal(err)
		}
		im, err := top.IndexManifest()
		if err != nil || len(im.Manifests) != 1 || im.Manifests[0].Digest != digest(t, idx) ||
			im.Manifests[0].Annotations[AnnotationRefName] != "kms:v1.2.3" {
			t.Fatalf("index.json: %+v %v", im, err)
		}
		if got, err := ReadIndex(dir); err != nil || digest(t, got) != digest(t, idx) {
			t.Errorf("ReadIndex: %v", err)
		}
		if _, err := ReadImage(dir); err == nil {
			t.Error("ReadImage read an index layout")
		}
		if err := WriteLayout(dir, idx, "again"); err == nil {
			t.Error("wrote into a non-empty layout")
		}
		var buf bytes.Buffer
		if err := WriteArchive(dir, &buf, time.Unix(1795714769, 0)); err != nil {
			t.Fatal(err)
		}
		archives[i] = buf.Bytes()
	}
	if !bytes.Equal(archives[0], archives[1]) {
		t.Error("archives of equal layouts differ")
	}
	// Bazel's sandbox shows a directory input as a tree of symlinks.
	src := filepath.Join(t.TempDir(), "layout")
	if err := WriteLayout(src, idx, "kms:v1.2.3"); err != nil {
		t.Fatal(err)
	}
	links := t.TempDir()
	filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(links, rel), 0o755)
		}
		return os.Symlink(p, filepath.Join(links, rel))
	})
	var viaLinks bytes.Buffer
	if err := WriteArchive(links, &viaLinks, time.Unix(1795714769, 0)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(viaLinks.Bytes(), archives[0]) {
		t.Error("the archive of a symlinked layout differs")
	}
	if created, err := LayoutCreated(links); err != nil || created.Unix() != 1795714769 {
		t.Errorf("LayoutCreated of the symlinked layout: %v %v", created, err)
	}
	if _, err := ReadIndex(links); err == nil {
		t.Error("go-containerregistry read a symlinked blob: CopyLayout may not be needed any more")
	}
	copied := filepath.Join(t.TempDir(), "copy")
	if err := CopyLayout(links, copied); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadIndex(copied); err != nil || digest(t, got) != digest(t, idx) {
		t.Errorf("ReadIndex of the copied symlinked layout: %v", err)
	}
	tr := tar.NewReader(bytes.NewReader(archives[0]))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	if names[0] != "blobs/" || !slices.Contains(names, "index.json") || !slices.Contains(names, "oci-layout") {
		t.Errorf("archive entries %v", names)
	}
}

func TestImageLayout(t *testing.T) {
	img, err := build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := WriteLayout(dir, img, ""); err != nil {
		t.Fatal(err)
	}
	got, err := ReadImage(dir)
	if err != nil || digest(t, got) != digest(t, img) {
		t.Fatalf("ReadImage: %v", err)
	}
	if _, err := ReadIndex(dir); err == nil {
		t.Error("ReadIndex read an image layout")
	}
	if created, err := LayoutCreated(dir); err != nil || created.Unix() != 1795714769 {
		t.Errorf("LayoutCreated: %v %v", created, err)
	}
}
