package cluster

import (
	"os"
	"path/filepath"
	"testing"
)

// The pages the drill follows and its table agree: every shell block is
// in Coverage, every entry of Coverage names one block that a drill runs,
// and no block has a bare fence. Fast: it runs without -short's skip.
func TestPagesCovered(t *testing.T) {
	blocks, err := pageBlocks()
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != len(Coverage) {
		t.Fatalf("%d blocks, %d entries in Coverage", len(blocks), len(Coverage))
	}
	for _, e := range Coverage {
		if len(e.Drills) == 0 || len(e.Nodes) == 0 {
			t.Errorf("%v: no drill or no node runs it", e.Block)
		}
	}
}

func TestReadBlocks(t *testing.T) {
	dir := t.TempDir()
	page := "# Title\n\n```sh\none\n```\n\n## Section\n\n1. Step:\n\n   ```sh\n   two\n     indented\n   ```\n\n   ```yaml\n   a: b\n   ```\n\n```text\nout\n```\n"
	if err := os.WriteFile(filepath.Join(dir, "p.md"), []byte(page), 0o600); err != nil {
		t.Fatal(err)
	}
	blocks, err := ReadBlocks(dir, "p.md")
	if err != nil {
		t.Fatal(err)
	}
	want := []Block{{"p.md", "Title", 3, "one", false}, {"p.md", "Section", 11, "two\n  indented", false}}
	if len(blocks) != len(want) || blocks[0] != want[0] || blocks[1] != want[1] {
		t.Fatalf("got %q, want %q", blocks, want)
	}
	if _, err := (BlockRef{"p.md", "Section", "tw"}).find(blocks); err != nil {
		t.Error(err)
	}
	if _, err := (BlockRef{"p.md", "Title", "two"}).find(blocks); err == nil {
		t.Error("a block of another section was found")
	}

	if err := os.WriteFile(filepath.Join(dir, "bare.md"), []byte("# T\n```\nkms status\n```\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if blocks, err := ReadBlocks(dir, "bare.md"); err != nil || len(blocks) != 1 || !blocks[0].Bare {
		t.Errorf("a bare fence: %v, %v; want one block, bare", blocks, err)
	}
}
