package packages

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestInstall installs, upgrades, removes and purges the .deb with dpkg, then
// installs, upgrades and erases the .rpm with rpm --root, all in a copy of a
// debootstrapped Debian root that holds an operator's keyring and drop-in,
// and checks after every step that both are as the operator left them and
// that systemd-analyze verifies the installed units.
//
// The new version is the release's packages when $KMS_PACKAGE_DIR names their
// directory (release/ci.sh: bazel-bin/release/packages_amd64), else one built
// here; the previous one is always built here, as version 0~~, which sorts
// before every other. Needs root (chroot), dpkg, rpm, systemd-analyze and
// debootstrap, or the root it made before (cached under ~/.cache/kms-pkgtest).
func TestInstall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: dpkg and rpm install into a chroot")
	}
	for _, tool := range []string{"chroot", "dpkg", "rpm", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found (apt-get install dpkg rpm systemd)", tool)
		}
	}
	root := debianRoot(t)
	bins := buildBinaries(t)
	// PackageVersion makes "~" 0~~, before every version it makes in dpkg's and rpm's
	// order alike (a tilde sorts before anything, even the end of the version). 0~0
	// would not do: rpm puts a number after letters, so 0~0 > 0~devel there.
	oldDeb, oldRPM := writePackages(t, unitPackage(t, "~", bins))
	newDeb, newRPM := releasePackages(t)
	if newDeb == "" {
		newDeb, newRPM = writePackages(t, unitPackage(t, "1.0.0", bins))
	}

	// The operator's files: a keyring as docs/systemd.md makes it, and a drop-in.
	keyring := filepath.Join(root, "etc/kms/kek")
	dropIn := filepath.Join(root, "etc/systemd/system/kms.service.d/backend.conf")
	mkdir(t, filepath.Dir(keyring), 0o700)
	mkdir(t, filepath.Dir(dropIn), 0o755)
	key := make([]byte, 32)
	rand.Read(key)
	write(t, keyring, key, 0o600)
	write(t, dropIn, []byte("[Service]\nEnvironment=OPERATOR=1\n"), 0o644)
	operatorFiles := map[string]os.FileMode{filepath.Dir(keyring): 0o700 | os.ModeDir, keyring: 0o600, dropIn: 0o644}
	want := map[string][]byte{keyring: key, dropIn: []byte("[Service]\nEnvironment=OPERATOR=1\n")}
	intact := func(step string) {
		t.Helper()
		for p, mode := range operatorFiles {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatalf("after %s: the operator's %s: %v", step, p, err)
			}
			if fi.Mode() != mode {
				t.Errorf("after %s: %s has mode %v, want %v", step, p, fi.Mode(), mode)
			}
			if b, ok := want[p]; ok {
				if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, b) {
					t.Fatalf("after %s: %s changed (err %v)", step, p, err)
				}
			}
		}
	}
	installed := func(step string, yes bool) {
		t.Helper()
		for _, f := range []string{"usr/bin/kms", "usr/bin/kek-census", "usr/bin/kek-gen", "usr/bin/kek-file", "usr/lib/systemd/system/kms.service", "usr/lib/systemd/system/kms.socket"} {
			_, err := os.Stat(filepath.Join(root, f))
			if yes && err != nil {
				t.Errorf("after %s: /%s: %v", step, f, err)
			}
			if !yes && !os.IsNotExist(err) {
				t.Errorf("after %s: /%s is still there (err %v)", step, f, err)
			}
		}
		if yes {
			// Strict: a warning (an unknown key, a missing binary) fails it too.
			out, err := exec.Command("systemd-analyze", "verify", "--root="+root, "kms.socket", "kms.service").CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("after %s: systemd-analyze verify: %v\n%s", step, err, out)
			}
		}
	}
	intact("the operator's setup")

	// No systemd runs here, so the package scripts' calls to it are recorded instead:
	// the root claims a running systemd (/run/systemd/system) and its systemctl, which
	// dpkg's and rpm's scripts (and deb-systemd-invoke) run, logs its arguments.
	mkdir(t, filepath.Join(root, "run/systemd/system"), 0o755)
	calls := filepath.Join(root, "systemctl.log")
	write(t, filepath.Join(root, "usr/bin/systemctl"), []byte("#!/bin/sh\necho \"$*\" >>/systemctl.log\n"), 0o755)
	systemctl := func(step string, want, never []string) {
		t.Helper()
		b, _ := os.ReadFile(calls)
		os.Remove(calls)
		log := string(b)
		t.Logf("%s: systemctl calls:\n%s", step, log)
		for _, w := range want {
			if !strings.Contains(log, w) {
				t.Errorf("after %s: no systemctl %q", step, w)
			}
		}
		for _, n := range never {
			if strings.Contains(log, n) {
				t.Errorf("after %s: systemctl %q", step, n)
			}
		}
	}

	for _, s := range []struct {
		step      string
		cmd       []string
		installed bool
		query     string // what dpkg-query or rpm -q says after the step
		// systemctl calls the scripts must and must never make
		calls, never []string
	}{
		// Installed, nothing is enabled or started: there is no keyring yet.
		{"dpkg -i (install)", []string{"chroot", root, "dpkg", "-i", inRoot(t, root, oldDeb)}, true, "install ok installed 0~~",
			[]string{"daemon-reload"}, []string{"start", "enable", "restart"}},
		// Upgraded, a running daemon restarts with the new binary; its socket stays.
		{"dpkg -i (upgrade)", []string{"chroot", root, "dpkg", "-i", inRoot(t, root, newDeb)}, true, "install ok installed " + debVersion(t, newDeb),
			[]string{"daemon-reload", "try-restart kms.service"}, []string{"kms.socket", "stop"}},
		{"dpkg -r (remove)", []string{"chroot", root, "dpkg", "-r", "kms"}, false, "deinstall ok config-files " + debVersion(t, newDeb),
			[]string{"stop kms.socket kms.service"}, []string{"start"}},
		{"dpkg -P (purge)", []string{"chroot", root, "dpkg", "-P", "kms"}, false, "", nil, []string{"start"}},
		{"rpm --initdb", []string{"rpm", "--root", root, "--initdb"}, false, "", nil, nil},
		// %systemd_post: the presets decide (systemctl preset), nothing starts.
		{"rpm -i", []string{"rpm", "--root", root, "-i", oldRPM}, true, "0~~",
			[]string{"preset kms.socket kms.service"}, []string{"start", "restart"}},
		{"rpm -U (upgrade)", []string{"rpm", "--root", root, "-U", newRPM}, true, rpmVersion(t, newRPM),
			[]string{"daemon-reload", "try-restart kms.service"}, []string{"kms.socket kms.service", "stop", "disable"}},
		{"rpm -e (erase)", []string{"rpm", "--root", root, "-e", "kms"}, false, "",
			[]string{"disable --now kms.socket kms.service"}, []string{"start"}},
	} {
		out, err := exec.Command(s.cmd[0], s.cmd[1:]...).CombinedOutput()
		t.Logf("%s:\n%s", strings.Join(s.cmd, " "), out)
		if err != nil {
			t.Fatalf("%s: %v", s.step, err)
		}
		intact(s.step)
		installed(s.step, s.installed)
		systemctl(s.step, s.calls, s.never)
		// The package manager's state: empty once the package is gone.
		var state []byte
		var qerr error
		switch {
		case strings.HasPrefix(s.step, "dpkg"):
			state, qerr = exec.Command("chroot", root, "dpkg-query", "-W", "-f", "${Status} ${Version}", "kms").Output()
		case s.step != "rpm --initdb":
			state, qerr = exec.Command("rpm", "--root", root, "-q", "--qf", "%{VERSION}", "kms").Output()
		}
		if qerr != nil {
			state = nil
		}
		if got := strings.TrimSpace(string(state)); got != s.query {
			t.Errorf("after %s: state %q, want %q", s.step, got, s.query)
		}
	}
}

// debianRoot returns a fresh copy of a Debian root of the host's suite,
// debootstrapped once (about a minute) and cached.
func debianRoot(t *testing.T) string {
	t.Helper()
	mirror, suite := hostMirror(t)
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	cached := filepath.Join(cache, "kms-pkgtest", "debian-"+suite)
	if _, err := os.Stat(cached); os.IsNotExist(err) {
		if _, err := exec.LookPath("debootstrap"); err != nil {
			t.Skip("debootstrap not found (apt-get install debootstrap)")
		}
		partial := cached + ".partial"
		os.RemoveAll(partial)
		t.Logf("debootstrap %s from %s into %s", suite, mirror, cached)
		out, err := exec.Command("debootstrap", "--variant=minbase", "--include=systemd", suite, partial, mirror).CombinedOutput()
		if err != nil {
			t.Fatalf("debootstrap: %v\n%s", err, out)
		}
		if err := os.Rename(partial, cached); err != nil {
			t.Fatal(err)
		}
	}
	root := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command("cp", "-a", cached, root).CombinedOutput(); err != nil {
		t.Fatalf("copying %s: %v\n%s", cached, err, out)
	}
	return root
}

// hostMirror reads the first Debian mirror and suite of the host's apt
// sources (deb822 or one-line format).
func hostMirror(t *testing.T) (mirror, suite string) {
	t.Helper()
	if f, err := os.Open("/etc/apt/sources.list.d/debian.sources"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() && (mirror == "" || suite == "") {
			k, v, _ := strings.Cut(sc.Text(), ":")
			if fields := strings.Fields(v); len(fields) > 0 && k == "URIs" && mirror == "" {
				mirror = fields[0]
			} else if len(fields) > 0 && k == "Suites" && suite == "" {
				suite = fields[0]
			}
		}
	} else if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "deb" && !strings.HasPrefix(f[1], "[") {
				mirror, suite = f[1], f[2]
				break
			}
		}
	}
	if mirror == "" || suite == "" {
		t.Skip("no Debian mirror in the host's apt sources")
	}
	return mirror, suite
}

// buildBinaries builds the four binaries static, as the release does.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/cmdkms/kms/src/cmd/kms",
		"github.com/cmdkms/kms/tools/helpers/kek-census", "github.com/cmdkms/kms/tools/helpers/kek-gen",
		"github.com/cmdkms/kms/tools/helpers/kek-file")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// unitPackage is a package of version v with the binaries in bins and the
// repository's units.
func unitPackage(t *testing.T, v, bins string) Package {
	t.Helper()
	p := Package{Version: v, Arch: runtime.GOARCH, Time: time.Unix(1700000000, 0)}
	for dest, src := range map[string]string{
		"/usr/bin/kms":                        filepath.Join(bins, "kms"),
		"/usr/bin/kek-census":                 filepath.Join(bins, "kek-census"),
		"/usr/bin/kek-gen":                    filepath.Join(bins, "kek-gen"),
		"/usr/bin/kek-file":                   filepath.Join(bins, "kek-file"),
		"/usr/lib/systemd/system/kms.service": "../deploy/systemd/kms.service",
		"/usr/lib/systemd/system/kms.socket":  "../deploy/systemd/kms.socket",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(dest, "/usr/bin/") {
			mode = 0o755
		}
		p.Files = append(p.Files, File{Path: dest, Mode: mode, Data: b})
	}
	return p
}

func writePackages(t *testing.T, p Package) (deb, rpm string) {
	t.Helper()
	dir := t.TempDir()
	deb, rpm = filepath.Join(dir, p.DebName()), filepath.Join(dir, p.RPMName())
	for path, build := range map[string]func() ([]byte, error){deb: p.Deb, rpm: p.RPM} {
		b, err := build()
		if err != nil {
			t.Fatal(err)
		}
		write(t, path, b, 0o644)
	}
	return deb, rpm
}

// releasePackages returns the .deb and .rpm in $KMS_PACKAGE_DIR, if set.
func releasePackages(t *testing.T) (deb, rpm string) {
	t.Helper()
	dir := os.Getenv("KMS_PACKAGE_DIR")
	if dir == "" {
		return "", ""
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	rpms, _ := filepath.Glob(filepath.Join(dir, "*.rpm"))
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("$KMS_PACKAGE_DIR %s: want one .deb and one .rpm, have %v %v", dir, debs, rpms)
	}
	return debs[0], rpms[0]
}

func debVersion(t *testing.T, deb string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", "-f", deb, "Version").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func rpmVersion(t *testing.T, rpm string) string {
	t.Helper()
	out, err := exec.Command("rpm", "-qp", "--qf", "%{VERSION}", rpm).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// inRoot copies a file into root's /tmp and returns its path there.
func inRoot(t *testing.T, root, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p := "/tmp/" + filepath.Base(file)
	write(t, filepath.Join(root, p), b, 0o644)
	return p
}

func mkdir(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(p, mode); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
}
