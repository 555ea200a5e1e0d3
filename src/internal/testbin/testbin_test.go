package testbin

import (
	"os"
	"path/filepath"
	"testing"
)

func TestKMSBinaryFromRunfiles(t *testing.T) {
	root := t.TempDir()
	rel := "_main/src/cmd/kms/kms_/kms"
	os.MkdirAll(filepath.Join(root, filepath.Dir(rel)), 0o755)
	os.WriteFile(filepath.Join(root, rel), []byte("#!/bin/true\n"), 0o755)

	t.Setenv("RUNFILES_DIR", root)
	t.Setenv("KMS_BINARY", rel)
	got, err := KMS(t.TempDir())
	if err != nil || got != filepath.Join(root, rel) {
		t.Fatalf("got %q, %v", got, err)
	}
	t.Setenv("KMS_BINARY", "_main/missing")
	if _, err := KMS(t.TempDir()); err == nil {
		t.Fatal("a missing KMS_BINARY was accepted")
	}
	t.Setenv("KMS_BINARY", "/abs/kms")
	if got, _ := KMS(t.TempDir()); got != "/abs/kms" {
		t.Fatalf("absolute: %q", got)
	}
}
