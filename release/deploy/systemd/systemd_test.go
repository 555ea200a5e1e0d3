// Package systemd holds kms.socket and kms.service (docs/systemd.md) and
// tests them: systemd's own checker on the files, and the daemon started
// the way the units start it, on a socket that systemd-socket-activate
// passes with LISTEN_FDS/LISTEN_PID.
package systemd

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/helpers/helpertest"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// unit reads a unit file into key -> values (a key may repeat).
func unit(t *testing.T, name string) map[string][]string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kv := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: bad line %q", name, line)
		}
		kv[k] = append(kv[k], v)
	}
	return kv
}

func one(t *testing.T, u map[string][]string, key string) string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Fatalf("%s: want one value, got %q", key, u[key])
	}
	return u[key][0]
}

// splitExec splits an ExecStart= line as systemd does, for the quoting
// this unit uses (whole words in single or double quotes, no escapes).
func splitExec(t *testing.T, line string) []string {
	t.Helper()
	if strings.ContainsAny(line, `\`) {
		t.Fatalf("ExecStart uses escapes this test does not parse: %s", line)
	}
	var words []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		end := strings.IndexAny(line, " \t")
		if q := line[0]; q == '\'' || q == '"' {
			end = strings.IndexByte(line[1:], q) + 2
			if end == 1 {
				t.Fatalf("unbalanced quote in ExecStart: %s", line)
			}
			words = append(words, line[1:end-1])
		} else {
			if end < 0 {
				end = len(line)
			}
			words = append(words, line[:end])
		}
		line = line[end:]
	}
	return words
}

// installed copies the units into a temp dir with the binary paths of this
// build, as a package would install them.
func installed(t *testing.T, kms string) string {
	dir := t.TempDir()
	for _, name := range []string{"kms.socket", "kms.service"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.ReplaceAll(string(b), "/usr/bin/kms ", kms+" "))
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func needTool(t *testing.T, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (Debian package systemd)", name)
	}
	return p
}

// systemd's own parser accepts both units without a single warning.
func TestUnitsVerify(t *testing.T) {
	analyze := needTool(t, "systemd-analyze")
	dir := installed(t, testbin.KMS(t))
	cmd := exec.Command(analyze, "verify", "./kms.socket", "./kms.service")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The hardening holds: systemd rates the service's exposure at most 2.0
// ("OK"; 10 is no sandboxing at all).
func TestServiceExposure(t *testing.T) {
	analyze := needTool(t, "systemd-analyze")
	dir := installed(t, testbin.KMS(t))
	cmd := exec.Command(analyze, "security", "--offline=yes", "--threshold=20", "./kms.service")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("exposure above 2.0: %v\n%s", err, out)
	}
}

func TestUnitSettings(t *testing.T) {
	sock := unit(t, "kms.socket")
	for k, want := range map[string]string{"SocketMode": "0600", "Accept": "no", "ListenStream": "/run/kms/kms.sock"} {
		if got := one(t, sock, k); got != want {
			t.Errorf("kms.socket %s=%s, want %s", k, got, want)
		}
	}
	svc := unit(t, "kms.service")
	for k, want := range map[string]string{"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "Requires": "kms.socket", "LimitCORE": "0"} {
		if got := one(t, svc, k); got != want {
			t.Errorf("kms.service %s=%s, want %s", k, got, want)
		}
	}
	argv := splitExec(t, one(t, svc, "ExecStart"))
	if strings.Contains(strings.Join(argv, " "), "--endpoint") {
		t.Errorf("ExecStart must not pass --endpoint: the socket comes from kms.socket: %q", argv)
	}
	// Metrics for an agent on the node, and for nobody else: the endpoints
	// have no authentication.
	if !slices.Contains(argv, "--health-address="+healthAddress) {
		t.Errorf("ExecStart must serve metrics on loopback (--health-address=%s): %q", healthAddress, argv)
	}
	// Each unit's Documentation= names a page that exists in the tree (the
	// README section the units named once has moved).
	for name, u := range map[string]map[string][]string{"kms.socket": sock, "kms.service": svc} {
		url := one(t, u, "Documentation")
		page, ok := strings.CutPrefix(url, docsURL)
		if !ok {
			t.Errorf("%s: Documentation=%s is not under %s", name, url, docsURL)
			continue
		}
		if _, err := os.Stat(filepath.Join("../../..", page)); err != nil {
			t.Errorf("%s: Documentation=%s: %v", name, url, err)
		}
	}
}

// docsURL is where the repository's files are published.
const docsURL = "https://github.com/cmdkms/kms/blob/main/"

// healthAddress is the --health-address of kms.service, the static pod's.
const healthAddress = "127.0.0.1:9464"

// The service's own ExecStart, run on a socket passed the systemd way: the
// KEK comes through kek-file from a credentials directory (%d), and a call
// made before kms runs waits in the socket's queue and is then served.
func TestSocketActivation(t *testing.T) {
	activate := needTool(t, "systemd-socket-activate")
	kms := testbin.KMS(t)
	kekFile := helpertest.KekFile(t)
	kekGen := helpertest.KekGen(t)
	dir := testbin.ShortDir(t)

	// What LoadCredential=kek:/etc/kms/kek gives the service.
	creds := filepath.Join(dir, "creds")
	os.Mkdir(creds, 0o700)
	if out, err := exec.Command(kekGen, filepath.Join(creds, "kek")).CombinedOutput(); err != nil {
		t.Fatalf("kek-gen: %v\n%s", err, out)
	}
	os.Chmod(filepath.Join(creds, "kek"), 0o400)
	b, _ := os.ReadFile(filepath.Join(creds, "kek"))
	ring, err := kek.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	wantID := ring.Keys[0].ID.String()
	ring.Wipe()

	svc := unit(t, "kms.service")
	argv := splitExec(t, strings.ReplaceAll(one(t, svc, "ExecStart"), "%d", creds))
	if argv[0] != "/usr/bin/kms" {
		t.Fatalf("ExecStart runs %s", argv[0])
	}
	argv[0] = kms
	// Any free loopback port: 9464 may be taken on a shared machine.
	i := slices.Index(argv, "--health-address="+healthAddress)
	if i < 0 {
		t.Fatalf("ExecStart has no --health-address=%s: %q", healthAddress, argv)
	}
	argv[i] = "--health-address=127.0.0.1:0"
	sock := filepath.Join(dir, "kms.sock")
	args := append([]string{"--listen=" + sock, "-E", "PATH=" + filepath.Dir(kekFile) + ":/usr/bin:/bin"}, argv...)
	// systemd-socket-activate listens, waits for the first connection and
	// then execs kms with LISTEN_FDS=1 and LISTEN_PID set to its own pid,
	// which exec keeps: kms's.
	d := testbin.Start(t, exec.Command(activate, args...), "Listening on "+sock)

	conn := testbin.Dial(t, sock)
	defer conn.Close()
	client := v2.NewKeyManagementServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := client.Status(ctx, &v2.StatusRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("Status: %v\n%s", err, d.Stderr())
	}
	if st.KeyId != wantID {
		t.Fatalf("key_id %s, want %s from the credential", st.KeyId, wantID)
	}
	enc, err := client.Encrypt(ctx, &v2.EncryptRequest{Plaintext: []byte("seed"), Uid: "u"})
	if err != nil {
		t.Fatal(err)
	}
	if dec, err := client.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "u"}); err != nil || string(dec.Plaintext) != "seed" {
		t.Fatalf("Decrypt: %v", err)
	}
	// kms logs this once it serves, so the calls above can come first.
	d.WaitLog(t, `msg="serving KMS v1beta1 and v2" socket=`+sock+" ", 30*time.Second)

	m := regexp.MustCompile(`msg="serving /healthz, /readyz and /metrics" address=(127\.0\.0\.1:\d+)`).FindStringSubmatch(d.Stderr())
	if m == nil {
		t.Fatalf("no health listener:\n%s", d.Stderr())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `kms_kek_key_info{key_id="` + wantID + `",role="primary"} 1`; !strings.Contains(string(metrics), want) {
		t.Fatalf("/metrics lacks %s:\n%s", want, metrics)
	}
	if code := d.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Stderr())
	}
	// The socket is systemd's: kms must leave it for the next start.
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("kms removed systemd's socket: %v", err)
	}
}
