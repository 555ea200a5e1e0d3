// Package helpertest finds the key-command helpers' binaries for tests
// (src/testbin.Binary): the ones Bazel built, named in the environment, or
// ones built with go build.
package helpertest

import (
	"testing"

	"github.com/cmdkms/kms/src/testbin"
)

// KekGen returns kek-gen's binary ($KEK_GEN_BINARY under Bazel).
func KekGen(t testing.TB) string {
	t.Helper()
	return testbin.Binary(t, "KEK_GEN_BINARY", "github.com/cmdkms/kms/tools/helpers/kek-gen")
}

// KekFile returns kek-file's binary ($KEK_FILE_BINARY under Bazel).
func KekFile(t testing.TB) string {
	t.Helper()
	return testbin.Binary(t, "KEK_FILE_BINARY", "github.com/cmdkms/kms/tools/helpers/kek-file")
}

// KekCensus returns kek-census's binary ($KEK_CENSUS_BINARY under Bazel).
func KekCensus(t testing.TB) string {
	t.Helper()
	return testbin.Binary(t, "KEK_CENSUS_BINARY", "github.com/cmdkms/kms/tools/helpers/kek-census")
}
