package imagebuilder

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
)

// LockedPackage is one Debian package pinned in release/debian.lock.json.
// Filename is relative to the archive root so that the lock names no host:
// the fetcher joins it to the mirrors found in apt's own configuration.
type LockedPackage struct {
	Name         string `json:"name"`
	Version      string `json:"version"`
	Architecture string `json:"architecture"`
	Filename     string `json:"filename"`
	SHA256       string `json:"sha256"`
}

// Lock is the parsed lock file.
type Lock struct {
	Packages []LockedPackage `json:"packages"`
}

// ReadLock parses a lock file.
func ReadLock(path string) (*Lock, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var l Lock
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &l, nil
}

// Deb is a package file matched to its lock entry.
type Deb struct {
	LockedPackage
	Data []byte
}

// MatchDebs reads the given .deb files and pairs each with its lock entry by
// sha256, so a file that was swapped or corrupted after fetching is refused
// even if the fetcher's own check was bypassed. Every locked package must be
// present exactly once.
func (l *Lock) MatchDebs(paths []string) ([]Deb, error) {
	bySum := map[string]LockedPackage{}
	for _, p := range l.Packages {
		bySum[p.SHA256] = p
	}
	seen := map[string]bool{}
	var out []Deb
	for _, path := range paths {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		p, ok := bySum[hex.EncodeToString(sum[:])]
		if !ok {
			return nil, fmt.Errorf("%s: sha256 %x is not in the lock file", path, sum)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("%s: package %s given twice", path, p.Name)
		}
		seen[p.Name] = true
		out = append(out, Deb{LockedPackage: p, Data: b})
	}
	for _, p := range l.Packages {
		if !seen[p.Name] {
			return nil, fmt.Errorf("locked package %s %s was not given", p.Name, p.Version)
		}
	}
	return out, nil
}
