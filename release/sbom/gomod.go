package sbom

import (
	"fmt"
	"strings"
)

// goMod is what the SBOM needs from go.mod: the main module and the version
// selected for every other module. Since Go 1.17 go.mod lists every module
// that provides a package to the build, so each linked package maps to one.
type goMod struct {
	main     string
	versions map[string]string
}

func parseGoMod(b []byte) (goMod, error) {
	m := goMod{versions: map[string]string{}}
	inRequire := false
	for i, line := range strings.Split(string(b), "\n") {
		if c := strings.Index(line, "//"); c >= 0 {
			line = line[:c]
		}
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case inRequire && f[0] == ")":
			inRequire = false
		case inRequire && len(f) == 2:
			m.versions[f[0]] = f[1]
		case f[0] == "module" && len(f) == 2:
			m.main = f[1]
		case f[0] == "require" && len(f) == 2 && f[1] == "(":
			inRequire = true
		case f[0] == "require" && len(f) == 3:
			m.versions[f[1]] = f[2]
		case f[0] == "replace":
			// A replaced module's source is not what its version names.
			return m, fmt.Errorf("go.mod:%d: replace directives are not supported in the SBOM", i+1)
		case inRequire:
			return m, fmt.Errorf("go.mod:%d: cannot parse %q", i+1, line)
		}
	}
	if m.main == "" {
		return m, fmt.Errorf("go.mod has no module line")
	}
	return m, nil
}

// moduleOf returns the module providing an import path: the longest module
// path that is the package path or a parent of it.
func (m goMod) moduleOf(pkg string) (path, version string, ok bool) {
	for p, v := range m.versions {
		if (pkg == p || strings.HasPrefix(pkg, p+"/")) && len(p) > len(path) {
			path, version, ok = p, v, true
		}
	}
	return path, version, ok
}

func (m goMod) isMain(pkg string) bool {
	return pkg == m.main || strings.HasPrefix(pkg, m.main+"/")
}
