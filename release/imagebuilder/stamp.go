package imagebuilder

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Keys of Bazel's stable-status.txt that tools/bazel.d/workspace_status.sh
// writes on --stamp builds.
const (
	keyVersion = "STABLE_KMS_VERSION"
	keyCommit  = "STABLE_KMS_COMMIT"
	keyEpoch   = "STABLE_KMS_SOURCE_DATE_EPOCH"
)

// Stamp is the identity of a --stamp build.
type Stamp struct {
	Version string // git describe, e.g. v1.2.3
	Commit  string // the full commit hash
	Epoch   int64  // SOURCE_DATE_EPOCH, or the commit's time
}

// ReadStamp reads a Bazel stable-status.txt.
func ReadStamp(statusFile string) (Stamp, error) {
	f, err := os.Open(statusFile)
	if err != nil {
		return Stamp{}, err
	}
	defer f.Close()
	st := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		st[k] = v
	}
	if err := sc.Err(); err != nil {
		return Stamp{}, err
	}
	for _, k := range []string{keyVersion, keyCommit, keyEpoch} {
		if _, ok := st[k]; !ok {
			return Stamp{}, fmt.Errorf("%s has no %s: is this a --stamp build with tools/bazel.d/workspace_status.sh?", statusFile, k)
		}
	}
	epoch, err := strconv.ParseInt(st[keyEpoch], 10, 64)
	if err != nil {
		return Stamp{}, fmt.Errorf("%s: %s: %w", statusFile, keyEpoch, err)
	}
	return Stamp{Version: st[keyVersion], Commit: st[keyCommit], Epoch: epoch}, nil
}
