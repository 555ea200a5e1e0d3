package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cmdkms/kms/src/testbin"
)

// A real etcd server, v3.7.0, as kubernetes 1.37.2 uses. The product's
// go.mod does not carry the etcd server (it would drag its dependencies into
// the release's module graph), so it is built from the drill's module,
// tools/dev/cluster, which pins it; $KEK_CENSUS_ETCD names a prebuilt one.
func etcdBinary(t testing.TB) string {
	t.Helper()
	return drillBinary(t, "KEK_CENSUS_ETCD", "./cmd/etcd")
}

// etcdctlBinary is etcdctl v3.7.0, from the same module ($KEK_CENSUS_ETCDCTL).
func etcdctlBinary(t testing.TB) string {
	t.Helper()
	return drillBinary(t, "KEK_CENSUS_ETCDCTL", "go.etcd.io/etcd/etcdctl/v3")
}

var (
	drillMu    sync.Mutex
	drillBuilt = map[string]string{}
	drillDir   string // made by TestMain, removed when the tests end
)

// drillBinary builds pkg in tools/dev/cluster's module once, unless env
// names a binary, and skips the test, saying why, when it cannot.
func drillBinary(t testing.TB, env, pkg string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	drillMu.Lock()
	defer drillMu.Unlock()
	if p, ok := drillBuilt[pkg]; ok {
		return p
	}
	module, err := filepath.Abs("../../dev/cluster")
	if err == nil {
		_, err = os.Stat(filepath.Join(module, "go.mod"))
	}
	if err != nil {
		t.Skipf("no %s to test against: the drill module is not here (under Bazel its sources are not); set %s: %v", pkg, env, err)
	}
	out := filepath.Join(drillDir, filepath.Base(strings.TrimSuffix(pkg, "/v3")))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = module
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("no %s to test against: go build in %s: %v\n%s(set %s to a prebuilt one)", pkg, module, err, b, env)
	}
	drillBuilt[pkg] = out
	return out
}

// etcd is a single-member etcd on loopback, and a client of it.
type etcd struct {
	endpoint string
	client   *clientv3.Client
	pki      *pki // nil without TLS
}

// startEtcd runs etcd until the test ends; with tls, clients must present
// a certificate signed by e.pki's CA, as on a kubeadm node.
func startEtcd(t testing.TB, withTLS bool, extra ...string) *etcd {
	t.Helper()
	bin := etcdBinary(t)
	dir := t.TempDir()
	scheme := "http"
	e := &etcd{}
	var tlsArgs []string
	if withTLS {
		scheme = "https"
		e.pki = newPKI(t, dir)
		tlsArgs = []string{"--trusted-ca-file", e.pki.CA, "--cert-file", e.pki.ServerCert, "--key-file", e.pki.ServerKey, "--client-cert-auth"}
	}
	client, peer := freePort(t), freePort(t)
	e.endpoint = fmt.Sprintf("%s://127.0.0.1:%d", scheme, client)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	args := append([]string{
		"--name", "census", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", e.endpoint, "--advertise-client-urls", e.endpoint,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "census=" + peerURL, "--log-level", "warn",
	}, tlsArgs...)
	testbin.Start(t, exec.Command(bin, append(args, extra...)...), "")

	cfg := clientv3.Config{Endpoints: []string{e.endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if withTLS {
		c, err := transport.TLSInfo{TrustedCAFile: e.pki.CA, CertFile: e.pki.ClientCert, KeyFile: e.pki.ClientKey}.ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLS = c
	}
	var err error
	if e.client, err = clientv3.New(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.client.Close() })
	testbin.WaitFor(t, "etcd to serve", 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := e.client.Get(ctx, "health")
		return err == nil
	})
	return e
}

// put writes kvs (key, value, key, value...) in transactions of up to
// batch puts.
func (e *etcd) put(t testing.TB, batch int, kvs ...string) {
	t.Helper()
	for len(kvs) > 0 {
		n := min(len(kvs), 2*batch)
		ops := make([]clientv3.Op, 0, n/2)
		for i := 0; i < n; i += 2 {
			ops = append(ops, clientv3.OpPut(kvs[i], kvs[i+1]))
		}
		if _, err := e.client.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		kvs = kvs[n:]
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// pki is a CA, etcd's serving certificate for 127.0.0.1 and a client
// certificate, as kubeadm makes for etcd (files, PEM).
type pki struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

func newPKI(t testing.TB, dir string) *pki {
	t.Helper()
	p := &pki{CA: dir + "/ca.crt", ServerCert: dir + "/server.crt", ServerKey: dir + "/server.key",
		ClientCert: dir + "/client.crt", ClientKey: dir + "/client.key"}
	ca, caKey := newCert(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "etcd-ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}, nil, nil, p.CA, "")
	newCert(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "etcd"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, ca, caKey, p.ServerCert, p.ServerKey)
	newCert(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-etcd-healthcheck-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey, p.ClientCert, p.ClientKey)
	return p
}

// newCert writes tmpl signed by parent (self-signed when nil) to certFile,
// and its key to keyFile unless that is empty.
func newCert(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if keyFile != "" {
		b, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cert, key
}
