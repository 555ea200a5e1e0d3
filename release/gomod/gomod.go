// Package gomod reads what the release tools need from go.mod and go.sum:
// the main module, the version selected for every other module, and the
// module hashes go.sum pins.
package gomod

import (
	"fmt"
	"sort"
	"strings"

	"golang.org/x/mod/modfile"
)

// File is a parsed go.mod. Since Go 1.17 go.mod lists every module that
// provides a package to the build, so each linked package maps to one.
type File struct {
	Main     string
	Versions map[string]string // module path -> version
}

// Parse reads a go.mod. Replace directives are refused: a replaced module's
// source is not what its version names.
func Parse(b []byte) (File, error) {
	f, err := modfile.Parse("go.mod", b, nil)
	if err != nil {
		return File{}, err
	}
	if f.Module == nil {
		return File{}, fmt.Errorf("go.mod has no module line")
	}
	if len(f.Replace) > 0 {
		return File{}, fmt.Errorf("go.mod:%d: replace directives are not supported", f.Replace[0].Syntax.Start.Line)
	}
	m := File{Main: f.Module.Mod.Path, Versions: map[string]string{}}
	for _, r := range f.Require {
		m.Versions[r.Mod.Path] = r.Mod.Version
	}
	return m, nil
}

// ModuleOf returns the module providing an import path: the longest module
// path that is the package path or a parent of it.
func (m File) ModuleOf(pkg string) (path, version string, ok bool) {
	for p, v := range m.Versions {
		if (pkg == p || strings.HasPrefix(pkg, p+"/")) && len(p) > len(path) {
			path, version, ok = p, v, true
		}
	}
	return path, version, ok
}

// IsMain reports whether an import path is in the main module.
func (m File) IsMain(pkg string) bool {
	return pkg == m.Main || strings.HasPrefix(pkg, m.Main+"/")
}

// Modules returns the required modules, sorted by path.
func (m File) Modules() []string {
	var paths []string
	for p := range m.Versions {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return paths
}

// Sums returns the module hashes of a go.sum ("h1:..." of the module's
// files, not of its go.mod alone) by "path@version".
func Sums(b []byte) (map[string]string, error) {
	sums := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case len(f) != 3:
			return nil, fmt.Errorf("go.sum:%d: cannot parse %q", i+1, line)
		case !strings.HasSuffix(f[1], "/go.mod"):
			sums[f[0]+"@"+f[1]] = f[2]
		}
	}
	return sums, nil
}
