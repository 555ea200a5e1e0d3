package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// The operator's pages are the drill's input: it runs their shell blocks
// as written, on the nodes the page says, and judges the outcome with its
// own checks. A page's block is named by its page, the heading above it
// and its first line; the drill's table below says where each runs, and
// the coverage check fails the drill when a page has a block the table
// does not name, or the table a block the page no longer has.

// Block is a fenced shell block of a page.
type Block struct {
	Page    string // relative to the repository's root
	Heading string // the nearest heading above it, without the #s
	Line    int    // of its opening fence, from 1
	Text    string // its lines, without the fence's indentation
	Bare    bool   // fenced with a bare ```, neither sh nor anything else
}

// First is the block's first line, which names it within its section.
func (b Block) First() string { first, _, _ := strings.Cut(b.Text, "\n"); return first }

func (b Block) String() string {
	return fmt.Sprintf("%s:%d (%s) %q", b.Page, b.Line, b.Heading, b.First())
}

// ReadBlocks returns the shell blocks (```sh) of the page at path (relative
// to root), and those with a bare fence (```), which a page the drill
// follows must not have: each block says whether it is a command (sh) or
// not (text, yaml, ...), so a command cannot escape the drill by its
// fence.
func ReadBlocks(root, page string) ([]Block, error) {
	data, err := os.ReadFile(filepath.Join(root, page))
	if err != nil {
		return nil, err
	}
	var blocks []Block
	var heading, fence string // fence: the open fence's indentation
	var in bool
	var cur *Block
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimLeft(line, " ")
		indent := line[:len(line)-len(trimmed)]
		switch {
		case in:
			if strings.TrimSpace(line) == "```" {
				if cur != nil {
					cur.Text = strings.TrimSuffix(cur.Text, "\n")
					blocks = append(blocks, *cur)
				}
				in, cur = false, nil
			} else if cur != nil {
				cur.Text += strings.TrimPrefix(line, fence) + "\n"
			}
		case strings.HasPrefix(trimmed, "```"):
			info := strings.TrimSpace(strings.TrimPrefix(trimmed, "```"))
			in, fence = true, indent
			if info == "sh" || info == "" {
				cur = &Block{Page: page, Heading: heading, Line: i + 1, Bare: info == ""}
			}
		case strings.HasPrefix(line, "#"):
			heading = strings.TrimSpace(strings.TrimLeft(line, "#"))
		}
	}
	if in {
		return nil, fmt.Errorf("%s: a fence is not closed", page)
	}
	return blocks, nil
}

// BlockRef names a block: page, heading and first line (a prefix of it).
type BlockRef struct{ Page, Heading, First string }

func (r BlockRef) String() string { return fmt.Sprintf("%s (%s) %q", r.Page, r.Heading, r.First) }

// find returns the one block of blocks that r names.
func (r BlockRef) find(blocks []Block) (Block, error) {
	var found []Block
	for _, b := range blocks {
		if b.Page == r.Page && b.Heading == r.Heading && strings.HasPrefix(b.First(), r.First) {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		return Block{}, fmt.Errorf("%v names %d blocks, want 1", r, len(found))
	}
	return found[0], nil
}

const (
	rotation = "docs/rotation.md"
	verify   = "docs/verify.md"
	airgap   = "docs/airgap.md"
	ha       = "Several API servers (HA)"
)

// The blocks the drill runs.
var (
	deployEach     = BlockRef{airgap, "As a static pod", "install -m 0644 deploy/kms-tmpfiles.conf"}
	deployFirst    = BlockRef{airgap, "As a static pod", "kek-gen /etc/kubernetes/kms/kek"}
	encRound1      = BlockRef{airgap, "Turning encryption on, in two rounds", "install -d -m 0700 /etc/kubernetes/enc"}
	encRound2      = BlockRef{airgap, "Turning encryption on, in two rounds", "sed -i"}
	encCensus      = BlockRef{airgap, "Turning encryption on, in two rounds", "kek-census"}
	rotStatus      = BlockRef{rotation, ha, "kms status"}
	rotAdd         = BlockRef{rotation, ha, "NEW="}
	rotRefresh     = BlockRef{rotation, ha, "kms refresh"}
	rotPromote     = BlockRef{rotation, ha, "kek-gen --promote"}
	rotCheck       = BlockRef{rotation, ha, "server="}
	rotMigrate     = BlockRef{rotation, ha, "RESOURCES="}
	rotReplace     = BlockRef{rotation, ha, "for r in $RESOURCES"}
	rotCensus      = BlockRef{rotation, ha, "kek-census"}
	rotRetire      = BlockRef{rotation, ha, "kek-gen --retire"}
	verCensus      = BlockRef{verify, "In etcd: every value is a KMS envelope naming its key", "kek-census"}
	verEnv         = BlockRef{verify, "In etcd: every value is a KMS envelope naming its key", "export ETCDCTL_ENDPOINTS"}
	verOd          = BlockRef{verify, "In etcd: every value is a KMS envelope naming its key", "etcdctl get /registry/secrets/default/my-secret --print-value-only | head"}
	verKeyID       = BlockRef{verify, "In etcd: every value is a KMS envelope naming its key", "etcdctl get /registry/secrets/default/my-secret --print-value-only | grep"}
	verKeyIDs      = BlockRef{verify, "In etcd: every value is a KMS envelope naming its key", "etcdctl get /registry/secrets/ --prefix --print-value-only | grep -ao 'kek1"}
	verV1Names     = BlockRef{verify, "In etcd: every value is a KMS envelope naming its key", "etcdctl get /registry/secrets/ --prefix --print-value-only | grep -ao '^k8s"}
	verReadyz      = BlockRef{verify, "In kube-apiserver: the KMS health checks", "kubectl get --raw '/readyz/kms-providers'"}
	legacyRound1   = BlockRef{rotation, "From the 2018 daemon", "sed -i 's/--mode=aesgcm/--mode=legacy/'"}
	legacyStatus   = BlockRef{rotation, "From the 2018 daemon", "kms status"}
	legacyRound2   = BlockRef{rotation, "From the 2018 daemon", "sed -i 's/--mode=legacy/--mode=aesgcm/'"}
	everyNode      = []string{"n1", "n2", "n3"}
	firstNode      = []string{"n1"}
	v1, v2, bothAP = []string{"v1"}, []string{"v2"}, []string{"v1", "v2"}
)

// Coverage says, for every block of the pages the drill follows, which
// drills (KMS API) run it and on which nodes: every block runs in at least
// one. The pages' headers say the same to their readers.
var Coverage = []struct {
	Block  BlockRef
	Drills []string
	Nodes  []string
}{
	{deployEach, bothAP, everyNode},
	{deployFirst, bothAP, firstNode},
	{encRound1, v2, everyNode},
	{encRound2, v2, everyNode},
	{encCensus, v2, firstNode},
	{rotStatus, bothAP, everyNode},
	{rotAdd, bothAP, firstNode},
	{rotRefresh, bothAP, everyNode},
	{rotPromote, bothAP, firstNode},
	{rotCheck, v2, everyNode},
	{rotMigrate, bothAP, firstNode},
	{rotReplace, v2, firstNode},
	{rotCensus, v2, firstNode},
	{rotRetire, bothAP, firstNode},
	{verCensus, bothAP, firstNode},
	{verEnv, bothAP, firstNode},
	{verOd, bothAP, firstNode},
	{verKeyID, v2, firstNode},
	{verKeyIDs, v2, firstNode},
	{verV1Names, v1, firstNode},
	{verReadyz, v2, everyNode},
	{legacyRound1, v1, everyNode},
	{legacyStatus, v1, everyNode},
	{legacyRound2, v1, everyNode},
}

// covered are the parts of the pages the drill follows: a whole page, or
// the sections of its headings listed.
var covered = []struct {
	page     string
	headings []string // none: every block of the page
}{
	{rotation, nil},
	{verify, nil},
	{airgap, []string{"As a static pod", "Turning encryption on, in two rounds"}},
}

// root is the repository's root, from this package's directory.
const root = "../../.."

// pageBlocks reads the blocks of the covered parts of the pages and checks
// them against Coverage: every block is in the table, and every entry of
// the table names one block.
func pageBlocks() ([]Block, error) {
	var all []Block
	for _, p := range covered {
		blocks, err := ReadBlocks(root, p.page)
		if err != nil {
			return nil, err
		}
		for _, b := range blocks {
			if p.headings == nil || slices.Contains(p.headings, b.Heading) {
				all = append(all, b)
			}
		}
	}
	var errs []string
	for _, b := range all {
		if b.Bare {
			errs = append(errs, fmt.Sprintf("%v: a bare ``` fence: mark the block sh (a command) or text", b))
		}
	}
	named := map[int]bool{}
	for _, e := range Coverage {
		b, err := e.Block.find(all)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		named[slices.IndexFunc(all, func(a Block) bool { return a.Page == b.Page && a.Line == b.Line })] = true
	}
	for i, b := range all {
		if !named[i] {
			errs = append(errs, fmt.Sprintf("%v: a shell block the drill does not run (add it to Coverage)", b))
		}
	}
	if errs != nil {
		return nil, fmt.Errorf("the pages and the drill's table disagree:\n%s", strings.Join(errs, "\n"))
	}
	return all, nil
}

// runs records which node ran which block, for the check at the end.
type runs struct {
	mu   sync.Mutex
	done map[BlockRef]map[string]bool
}

// add records that node ran b, and says whether it is the first time.
func (r *runs) add(b BlockRef, node string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done == nil {
		r.done = map[BlockRef]map[string]bool{}
	}
	if r.done[b] == nil {
		r.done[b] = map[string]bool{}
	}
	first := !r.done[b][node]
	r.done[b][node] = true
	return first
}

// check fails t for every block Coverage assigns to drill api that a node
// it names did not run.
func (r *runs) check(t testing.TB, api string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range Coverage {
		if !slices.Contains(e.Drills, api) {
			continue
		}
		for _, n := range e.Nodes {
			if !r.done[e.Block][n] {
				t.Errorf("coverage: %s did not run %v, which the table says it runs", n, e.Block)
			}
		}
	}
}
