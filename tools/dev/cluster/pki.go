package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// pki is the cluster's credentials: a CA that signs the API servers' and
// etcd members' certificates and etcd's client certificates, the
// service-account signing key, and the admin's bearer token (group
// system:masters, through --token-auth-file).
type pki struct {
	caPEM []byte
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	token string
	saKey []byte // PEM RSA key, for --service-account-(signing-)key-file
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kms drill CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{
		caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		ca:    ca,
		caKey: key,
		token: randomHex(16),
		saKey: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}),
	}
}

// node writes n's credentials where kubeadm keeps them: the CA (the
// cluster's and etcd's, one CA here), the API server's serving certificate
// and etcd client certificate, the etcd member's serving certificate (for
// the node's address and 127.0.0.1), the health check client certificate
// the pages' kek-census and etcdctl use, the service-account key and the
// admin's token.
func (p *pki) node(t testing.TB, n *node) {
	t.Helper()
	dir := n.path("/etc/kubernetes/pki")
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	writeFile(t, dir+"/ca.crt", p.caPEM)
	writeFile(t, dir+"/etcd/ca.crt", p.caPEM)
	p.cert(t, "kube-apiserver "+n.name, []string{n.ip}, server, dir+"/apiserver")
	p.cert(t, "kube-apiserver-etcd-client", nil, client, dir+"/apiserver-etcd-client")
	p.cert(t, n.name, []string{n.ip, "127.0.0.1"}, server, dir+"/etcd/server")
	p.cert(t, "kube-etcd-healthcheck-client", nil, client, dir+"/etcd/healthcheck-client")
	writeFile(t, dir+"/sa.key", p.saKey)
	writeFile(t, dir+"/tokens.csv", []byte(p.token+`,admin,admin,"system:masters"`+"\n"))
}

// cert writes base.crt, a certificate for cn (and ips) with usage, signed
// by the CA, and its key base.key.
func (p *pki) cert(t testing.TB, cn string, ips []string, usage x509.ExtKeyUsage, base string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, base+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, base+".key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
}

// kubeconfig writes a kubeconfig with one context per API server, named
// after its node; the first is the current context.
func (p *pki) kubeconfig(t testing.TB, path string, nodes []*node) {
	t.Helper()
	ca := base64.StdEncoding.EncodeToString(p.caPEM)
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Config\ncurrent-context: %s\nusers:\n- name: admin\n  user:\n    token: %s\nclusters:\n", nodes[0].name, p.token)
	for _, n := range nodes {
		fmt.Fprintf(&b, "- name: %s\n  cluster:\n    server: %s\n    certificate-authority-data: %s\n", n.name, n.apiURL(), ca)
	}
	b.WriteString("contexts:\n")
	for _, n := range nodes {
		fmt.Fprintf(&b, "- name: %s\n  context:\n    cluster: %s\n    user: admin\n", n.name, n.name)
	}
	writeFile(t, path, []byte(b.String()))
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}
