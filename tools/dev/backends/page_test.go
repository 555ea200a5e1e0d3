package backends

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/helpers/helpertest"
)

// repo is the repository's root from this package's directory; the pages'
// blocks run there, as an operator runs them from a checkout or the bundle.
const repo = "../../.."

// block is one ```sh block of a page. A block whose first line is
// "# on one node" runs on the first node only; any other on each node in
// turn.
type block struct {
	text    string
	oneNode bool
}

// pageBlocks reads a page's ```sh blocks, in order.
func pageBlocks(t *testing.T, page string) []block {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, page))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []block
	for _, m := range regexp.MustCompile("(?ms)^```sh\n(.*?)^```$").FindAllSubmatch(b, -1) {
		text := string(m[1])
		blocks = append(blocks, block{text, strings.HasPrefix(text, "# on one node")})
	}
	if len(blocks) == 0 {
		t.Fatalf("%s has no ```sh blocks", page)
	}
	return blocks
}

// node is one machine of the page's cluster: a root directory standing for
// its /, its own TPM, and a kms that systemctl (fakeSystemctl) restarts.
type node struct {
	name, root, bin string
	tpm             *swtpm
}

func newNode(t *testing.T, name string) *node {
	t.Helper()
	n := &node{name: name, root: testbin.ShortDir(t), tpm: startSWTPM(t)}
	n.bin = filepath.Join(n.root, "usr", "bin")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{n.bin, filepath.Join(n.root, "etc", "kms"), filepath.Join(n.root, "run", "kms")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range map[string]string{"kms": testbin.KMS(t), "kek-gen": helpertest.KekGen(t), "systemctl": self} {
		if err := os.Symlink(target, filepath.Join(n.bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { stopKMS(n.root) })
	return n
}

// run runs a block on the node as written, but for / standing for the
// node's root directory, with the node's TPM and its pins (see writePins).
func (n *node) run(t *testing.T, b block) {
	t.Helper()
	text := strings.NewReplacer("/etc/", n.root+"/etc/", "/run/", n.root+"/run/").Replace(b.text)
	cmd := exec.Command("/bin/sh", "-e", "-c", text)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "PATH="+n.bin+":"+n.tpm.path(), "TPM2TOOLS_TCTI="+n.tpm.tcti, "NODE_ROOT="+n.root)
	out, err := cmd.CombinedOutput()
	t.Logf("%s$ %s\n%s", n.name, strings.ReplaceAll(strings.TrimSpace(b.text), "\n", "\n"+n.name+"$ "), out)
	if err != nil {
		t.Fatalf("%s: the block failed: %v", n.name, err)
	}
}

// socket is where the node's kms listens (kms.socket's ListenStream).
func (n *node) socket() string { return filepath.Join(n.root, "run", "kms", "kms.sock") }

// keys runs `kms status` on the node and returns its keys as "id role",
// or nil when no kms runs there yet.
func (n *node) keys(t *testing.T) []string {
	t.Helper()
	if _, err := os.Stat(n.socket()); err != nil {
		return nil
	}
	out, _, err := try(nil, nil, testbin.KMS(t), "status", "--endpoint", "unix://"+n.socket())
	if err != nil {
		t.Fatalf("%s: kms status: %v\n%s", n.name, err, out)
	}
	var keys []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[0], "kek1-") {
			keys = append(keys, f[0]+" "+f[1])
		}
	}
	return keys
}

// call runs f on a fresh connection to the node's kms: a restart closes
// the one before.
func (n *node) call(t *testing.T, f func(v2.KeyManagementServiceClient)) {
	t.Helper()
	conn := testbin.Dial(t, n.socket())
	defer conn.Close()
	f(v2.NewKeyManagementServiceClient(conn))
}

// record is a DEK seed stored through one node's kms, as kube-apiserver
// stores it.
type record struct {
	plain, keyID string
	ciphertext   []byte
}

func write(t *testing.T, n *node, plain string) record {
	t.Helper()
	var r record
	n.call(t, func(c v2.KeyManagementServiceClient) {
		enc, err := c.Encrypt(context.Background(), &v2.EncryptRequest{Plaintext: []byte(plain), Uid: plain})
		if err != nil {
			t.Fatalf("%s: Encrypt: %v", n.name, err)
		}
		r = record{plain, enc.KeyId, enc.Ciphertext}
	})
	return r
}

func (r record) readOn(t *testing.T, n *node) (err error) {
	t.Helper()
	n.call(t, func(c v2.KeyManagementServiceClient) {
		var dec *v2.DecryptResponse
		dec, err = c.Decrypt(context.Background(), &v2.DecryptRequest{Ciphertext: r.ciphertext, KeyId: r.keyID, Uid: r.plain})
		if err == nil && string(dec.Plaintext) != r.plain {
			err = fmt.Errorf("got %q", dec.Plaintext)
		}
	})
	return err
}

// The TPM 2.0 page run as written on two nodes, each with its own TPM: its
// provisioning and the three steps of its rotation must leave both nodes'
// kms holding the same keys after every block, and what either wrote
// readable on both, also between the nodes' turns. Before the promotion's rewrite is due, the data is
// rewritten under the new primary (what the rewrite in rotation.md does),
// and after the retirement the old ciphertexts no longer open: under
// systemd a restart loads each step, so no retired key lingers unlisted.
func TestTPM2PageOnTwoNodes(t *testing.T) {
	needTPM(t)
	nodes := []*node{newNode(t, "node-a"), newNode(t, "node-b")}
	var data []record
	var first []record // written before the rotation, never rewritten
	primary := ""
	for _, b := range pageBlocks(t, "docs/backends/tpm2.md") {
		if b.oneNode {
			nodes[0].run(t, b)
			copyPlainKeyrings(t, nodes)
		} else {
			for _, n := range nodes {
				n.run(t, b)
				crossRead(t, n, nodes)
			}
		}
		held := nodes[0].keys(t)
		if held == nil {
			continue // no kms started yet
		}
		for _, n := range nodes[1:] {
			if keys := n.keys(t); !slices.Equal(keys, held) {
				t.Fatalf("after the block above, %s holds %q and %s holds %q", nodes[0].name, held, n.name, keys)
			}
		}
		t.Logf("both nodes hold %q", held)
		now := strings.Fields(held[0])[0]
		switch {
		case primary == "":
			for _, n := range nodes {
				data = append(data, write(t, n, "written on "+n.name))
			}
			first = slices.Clone(data)
		case now != primary:
			// kube-apiserver writes under the new primary from here on, and
			// the rewrite moves every object to it.
			for i, r := range data {
				data[i] = write(t, nodes[i%len(nodes)], r.plain)
			}
		}
		primary = now
		for _, r := range data {
			for _, n := range nodes {
				if err := r.readOn(t, n); err != nil {
					t.Fatalf("%q (key %s) does not decrypt on %s: %v", r.plain, r.keyID, n.name, err)
				}
			}
		}
	}
	if len(first) == 0 || primary == first[0].keyID {
		t.Fatalf("the page did not rotate: primary %s, first data under %v", primary, first)
	}
	if keys := nodes[0].keys(t); len(keys) != 1 {
		t.Fatalf("after the rotation the nodes hold %q, want the new key alone", keys)
	}
	for _, n := range nodes {
		if err := first[0].readOn(t, n); err == nil {
			t.Fatalf("%s still decrypts with the retired key after its restart", n.name)
		}
	}
}

// crossRead checks the state between two nodes' turns, which kube-apiserver
// lives through too: once every node's kms runs, what n's kms writes now
// must decrypt on every node, whichever step each node has loaded.
func crossRead(t *testing.T, n *node, nodes []*node) {
	t.Helper()
	for _, m := range nodes {
		if m.keys(t) == nil {
			return
		}
	}
	r := write(t, n, "written on "+n.name+" in its turn")
	for _, m := range nodes {
		if err := r.readOn(t, m); err != nil {
			t.Fatalf("what %s wrote in its turn (key %s) does not decrypt on %s: %v", n.name, r.keyID, m.name, err)
		}
	}
}

// copyPlainKeyrings does the step the pages leave to the operator's own
// transport (scp): the plaintext keyring a one-node block left in
// /run/kms-*/kek goes to the same path on every other node.
func copyPlainKeyrings(t *testing.T, nodes []*node) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(nodes[0].root, "run", "kms-*", "kek"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(nodes[0].root, f)
		for _, n := range nodes[1:] {
			to := filepath.Join(n.root, rel)
			if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
				t.Fatal(err)
			}
			writeFile(t, to, b)
		}
	}
}

// fakeSystemctl is systemctl as far as the pages use it, on the node whose
// root is $NODE_ROOT: `restart kms` does what systemd does with kms.service
// and its drop-in there — stops the running kms, copies each
// LoadCredential= file into a fresh credentials directory (%d), and starts
// the drop-in's ExecStart on the node's socket, where systemd would pass
// kms.socket's. Everything else (daemon-
// reload, enable) has nothing to do here. The test binary runs as this
// when called by that name (TestMain).
func fakeSystemctl(args []string) int {
	root := os.Getenv("NODE_ROOT")
	if strings.Join(args, " ") != "restart kms" {
		return 0
	}
	if err := restartKMS(root); err != nil {
		fmt.Fprintln(os.Stderr, "systemctl restart kms:", err)
		return 1
	}
	return 0
}

func restartKMS(root string) error {
	stopKMS(root)
	f, err := os.Open(filepath.Join(root, "etc", "systemd", "system", "kms.service.d", "backend.conf"))
	if err != nil {
		return err
	}
	defer f.Close()
	creds := filepath.Join(root, "run", "credentials", "kms.service")
	os.RemoveAll(creds)
	if err := os.MkdirAll(creds, 0o700); err != nil {
		return err
	}
	var command string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, _ := strings.Cut(sc.Text(), "=")
		switch {
		case key == "LoadCredential" && value != "":
			name, path, _ := strings.Cut(value, ":")
			b, err := os.ReadFile(filepath.Join(root, path))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(creds, name), b, 0o400); err != nil {
				return err
			}
		case key == "ExecStart" && value != "":
			m := execStart.FindStringSubmatch(sc.Text())
			if m == nil {
				return fmt.Errorf("ExecStart=%s: not the drop-ins' /usr/bin/kms --health-address=... --command '...'", value)
			}
			command = strings.NewReplacer("%d", creds, "$$", "$").Replace(m[1])
		}
	}
	logFile := filepath.Join(root, "kms.log")
	serving := func() int {
		b, _ := os.ReadFile(logFile)
		return strings.Count(string(b), `msg="serving KMS v1beta1 and v2"`)
	}
	before := serving()
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	// Both nodes share one loopback: any free port stands for 9464.
	cmd := exec.Command(filepath.Join(root, "usr", "bin", "kms"), "--health-address=127.0.0.1:0", "--allow-uid", "0", "--command", command,
		"--endpoint", "unix://"+filepath.Join(root, "run", "kms", "kms.sock"))
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "run", "kms.pid"), []byte(fmt.Sprint(cmd.Process.Pid)), 0o600); err != nil {
		return err
	}
	cmd.Process.Release()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if serving() > before {
			return nil
		}
	}
	return fmt.Errorf("kms did not start; see %s", logFile)
}

// stopKMS stops the node's kms, if one runs, as systemd does: SIGTERM,
// then wait for it to be gone (it removes its socket on the way out).
func stopKMS(root string) {
	b, err := os.ReadFile(filepath.Join(root, "run", "kms.pid"))
	if err != nil {
		return
	}
	var pid int
	fmt.Sscan(string(b), &pid)
	syscall.Kill(pid, syscall.SIGTERM)
	sock := filepath.Join(root, "run", "kms", "kms.sock")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(sock); err != nil {
			break
		}
	}
	os.Remove(filepath.Join(root, "run", "kms.pid"))
}
