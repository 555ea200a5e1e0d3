package kekfile

import (
	"testing"

	"github.com/cmdkms/kms/src/keysource"
)

// A file the helpers accept must be one the daemon accepts from a command.
func TestMaxSizeIsTheDaemons(t *testing.T) {
	if MaxSize != keysource.MaxOutput {
		t.Fatalf("MaxSize %d, keysource.MaxOutput %d", MaxSize, keysource.MaxOutput)
	}
}
