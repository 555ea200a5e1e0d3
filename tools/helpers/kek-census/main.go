// Command kek-census counts, for each Kubernetes resource stored in etcd,
// how many values use each encryption envelope (KMS v2 provider and key_id,
// KMS v1 provider, aescbc/aesgcm/secretbox key, identity), so that no key
// or provider is removed while a stored value still needs it. It reads etcd
// directly, read-only, a page at a time: its memory does not grow with the
// size of the store.
package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cmdkms/kms/src/cli"
)

const usageHead = `kek-census: count the encryption envelopes of the values Kubernetes stores in etcd.

Usage:
  kek-census --endpoints URL[,URL...] [--cacert F --cert F --key F] [--prefix /registry]
             [--resource R]... [--require-none X]... [--json] [--page-size N] [--dial-timeout D]

For each resource (the key's first segment under --prefix, or group/resource for
keys like /registry/<group.with.dots>/<resource>/...) it prints how many values use
each envelope: kms-v2 (provider name and key_id), kms-v1 (provider name, and the
key_id when kms made the DEK's ciphertext), aescbc, aesgcm, secretbox (key name),
identity (plaintext) and unknown. It only reads, at one etcd revision, a chunk at a
time, linearizably. It needs no Kubernetes access: it reads etcd with an etcd
client certificate (on a kubeadm node: /etc/kubernetes/pki/etcd/ca.crt and
healthcheck-client.crt/.key).

--require-none X (a key_id, a provider or key name, or the word identity) fails
with exit status 1, naming the first values that still use X, unless none does.
--resource R (secrets, or group/resource for a custom resource) limits the census
to the resources the EncryptionConfiguration names: others are stored in plaintext.
Exit status: 0 ok, 1 a --require-none found values or etcd failed, 2 usage.
See docs/census.md.

Flags:
`

type options struct {
	endpoints         []string
	cacert, cert, key string
	prefix            string
	resources         []string
	requireNone       []string
	json              bool
	pageSize          int
	dialTimeout       time.Duration
}

const (
	// maxPageBytes is the largest response accepted: a page that exceeds
	// it is split, so memory stays bounded whatever the values' sizes.
	maxPageBytes = 32 << 20
	// firstKeys is how many keys a --require-none names.
	firstKeys = 10
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the exit code: 0 ok, 1 failure, 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
	return cli.Command{Name: "kek-census", Usage: usageHead, Flags: func(fs *pflag.FlagSet) func([]string) error {
		o := &options{}
		fs.StringSliceVar(&o.endpoints, "endpoints", nil, "etcd client URLs, comma-separated (https://127.0.0.1:2379)")
		fs.StringVar(&o.cacert, "cacert", "", "CA bundle that signed etcd's serving certificate (default: the system's)")
		fs.StringVar(&o.cert, "cert", "", "client certificate for etcd (PEM)")
		fs.StringVar(&o.key, "key", "", "private key of --cert (PEM)")
		fs.StringVar(&o.prefix, "prefix", "/registry", "kube-apiserver's --etcd-prefix")
		fs.StringArrayVar(&o.resources, "resource", nil, "count only this resource, as printed: secrets, or GROUP/RESOURCE (repeatable; default all)")
		fs.StringArrayVar(&o.requireNone, "require-none", nil, "fail if any value uses this key_id, provider or key name, or identity (repeatable)")
		fs.BoolVar(&o.json, "json", false, "print JSON (fields in docs/census.md) instead of a table")
		fs.IntVar(&o.pageSize, "page-size", 0, "read in range requests of this many values (halved while one exceeds 32 MiB) instead of etcd 3.7's range stream (default: the stream, else 1000)")
		fs.DurationVar(&o.dialTimeout, "dial-timeout", 5*time.Second, "how long to wait for etcd's first answer")
		return func(args []string) error {
			if err := o.check(args); err != nil {
				return err
			}
			return census(o, stdout)
		}
	}}.Run(args, stdout, stderr)
}

func (o *options) check(args []string) error {
	if err := cli.NoArgs(args); err != nil {
		return err
	}
	if len(o.endpoints) == 0 {
		return cli.Usagef("--endpoints is required (kube-apiserver's --etcd-servers)")
	}
	for _, e := range o.endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return cli.Usagef("--endpoints %q: want a URL like https://127.0.0.1:2379", e)
		}
	}
	if (o.cert == "") != (o.key == "") {
		return cli.Usagef("--cert and --key go together")
	}
	if !strings.HasPrefix(o.prefix, "/") {
		return cli.Usagef("--prefix %q: want an absolute key prefix like /registry", o.prefix)
	}
	o.prefix = strings.TrimSuffix(o.prefix, "/") + "/"
	for _, r := range o.resources {
		group, res, grouped := strings.Cut(r, "/")
		if r == "" || strings.Contains(res, "/") || grouped != strings.Contains(group, ".") {
			return cli.Usagef("--resource %q: want a resource as kek-census prints it: secrets, or GROUP/RESOURCE with a dotted group", r)
		}
	}
	if o.pageSize < 0 {
		return cli.Usagef("--page-size %d: want 1 or more", o.pageSize)
	}
	if o.dialTimeout <= 0 {
		return cli.Usagef("--dial-timeout %v: want a positive duration", o.dialTimeout)
	}
	for _, x := range o.requireNone {
		if x == "" {
			return cli.Usagef("--require-none: empty value")
		}
	}
	return nil
}

// tlsConfig is nil for plain http:// endpoints without TLS flags.
func (o *options) tlsConfig() (*tls.Config, error) {
	secure := o.cacert != "" || o.cert != ""
	for _, e := range o.endpoints {
		secure = secure || strings.HasPrefix(e, "https://")
	}
	if !secure {
		return nil, nil
	}
	info := transport.TLSInfo{TrustedCAFile: o.cacert, CertFile: o.cert, KeyFile: o.key}
	// etcd's own loader reads the files and checks that key and cert match.
	c, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	return c, nil
}

func census(o *options, stdout io.Writer) error {
	tc, err := o.tlsConfig()
	if err != nil {
		return err
	}
	cl, err := clientv3.New(clientv3.Config{
		Endpoints:          o.endpoints,
		TLS:                tc,
		DialTimeout:        o.dialTimeout,
		MaxCallRecvMsgSize: maxPageBytes,
		Logger:             zap.NewNop(), // errors are returned, and reported once
	})
	if err != nil {
		return fmt.Errorf("etcd %s: %w", strings.Join(o.endpoints, ","), err)
	}
	defer cl.Close()

	c := newCount(o.prefix, o.requireNone, firstKeys)
	rev, err := scan(context.Background(), cl, o, c.add)
	if errors.Is(err, errNoAnswer) {
		// The client only says it timed out; a connection of our own says why.
		err = fmt.Errorf("%w (%s: %v)", err, o.endpoints[0], probe(o.endpoints[0], tc, o.dialTimeout))
	}
	if err != nil {
		return fmt.Errorf("etcd %s: %w", strings.Join(o.endpoints, ","), err)
	}
	r := c.result(o, rev)
	if o.json {
		err = r.writeJSON(stdout)
	} else {
		err = r.writeTable(stdout)
	}
	if err != nil {
		return err
	}
	for _, f := range r.RequireNone {
		if f.Values > 0 {
			return cli.ErrReported
		}
	}
	return nil
}

var errNoAnswer = errors.New("no answer")

// probe connects to endpoint as the etcd client would and returns why that
// fails: refused, or the TLS handshake's error (a server certificate from
// another CA, or etcd rejecting the client certificate), or nil.
func probe(endpoint string, tc *tls.Config, timeout time.Duration) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("tcp", u.Host, timeout)
	if err != nil || tc == nil {
		return cmp.Or(err, errors.New("connected, but etcd did not answer"))
	}
	defer conn.Close()
	tc = tc.Clone()
	tc.ServerName, tc.NextProtos = u.Hostname(), []string{"h2"}
	tlsConn := tls.Client(conn, tc)
	tlsConn.SetDeadline(time.Now().Add(timeout))
	if err := tlsConn.Handshake(); err != nil {
		return err
	}
	// Under TLS 1.3 the server checks the client's certificate after the
	// client's side of the handshake: its verdict comes with the first read.
	if _, err := tlsConn.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return errors.New("TLS handshake done, but etcd did not answer")
}

// pageTimeout bounds each range request, or the wait for each chunk of a
// range stream.
const pageTimeout = time.Minute

// defaultPageSize is the page size when etcd has no range stream.
const defaultPageSize = 1000

// ranges are the key prefixes to read: o.prefix, or one per --resource.
func (o *options) ranges() []string {
	if len(o.resources) == 0 {
		return []string{o.prefix}
	}
	var r []string
	for _, res := range o.resources {
		r = append(r, o.prefix+res+"/")
	}
	return r
}

// scan calls add for every key and value under o's ranges, as of one
// revision, which it returns: that of a first read of a single key, so the
// census is of one consistent state of the store even while kube-apiserver
// writes. Reads are linearizable: a serializable one could be answered by
// a member that has not yet applied the latest writes, and a census that
// misses a new write under an old key lets a key be retired that a value
// still needs. The cost is one read-index round trip per request.
func scan(ctx context.Context, kv clientv3.KV, o *options, add func(key, value []byte)) (int64, error) {
	first, cancel := context.WithTimeout(ctx, o.dialTimeout)
	resp, err := kv.Get(first, o.prefix)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) {
		return 0, fmt.Errorf("%w within --dial-timeout %v", errNoAnswer, o.dialTimeout)
	}
	if err != nil {
		return 0, err
	}
	rev := resp.Header.Revision
	for _, prefix := range o.ranges() {
		from, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
		if o.pageSize == 0 {
			if from, err = stream(ctx, kv, from, end, rev, add); err == nil {
				continue
			}
			// etcd before 3.7 has no range stream; a chunk over
			// maxPageBytes is read again in pages.
			if c := status.Code(err); c != codes.Unimplemented && c != codes.ResourceExhausted {
				return 0, err
			}
		}
		if err := pages(ctx, kv, o, from, end, rev, add); err != nil {
			return 0, err
		}
	}
	return rev, nil
}

// stream reads [from, end) at rev with etcd 3.7's RangeStream: etcd sends
// chunks of about its request size limit, and unlike range requests with a
// limit it does not count the rest of the range for each one, so a scan
// costs time linear in the store's size. It returns where to continue
// after an error.
func stream(ctx context.Context, kv clientv3.KV, from, end string, rev int64, add func(key, value []byte)) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := kv.GetStream(ctx, from, clientv3.WithRange(end), clientv3.WithRev(rev))
	if err != nil {
		return from, err
	}
	stalled := time.AfterFunc(pageTimeout, cancel)
	defer stalled.Stop()
	for chunk := range ch {
		if err := chunk.Err(); err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("the range stream sent nothing for %v: %w", pageTimeout, err)
			}
			return from, err
		}
		stalled.Reset(pageTimeout)
		for _, kv := range chunk.Kvs {
			add(kv.Key, kv.Value)
		}
		if n := len(chunk.Kvs); n > 0 {
			from = string(chunk.Kvs[n-1].Key) + "\x00"
		}
	}
	return from, ctx.Err()
}

// pages reads [from, end) at rev in range requests of --page-size values,
// or fewer if a page is too large, each continuing after the last key of
// the one before.
func pages(ctx context.Context, kv clientv3.KV, o *options, from, end string, rev int64, add func(key, value []byte)) error {
	limit := cmp.Or(o.pageSize, defaultPageSize)
	for {
		rctx, cancel := context.WithTimeout(ctx, pageTimeout)
		resp, err := kv.Get(rctx, from, clientv3.WithRange(end), clientv3.WithLimit(int64(limit)), clientv3.WithRev(rev))
		cancel()
		if status.Code(err) == codes.ResourceExhausted && limit > 1 {
			limit /= 2 // large values: fewer per page (for the rest of the scan) keeps memory bounded
			continue
		}
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			add(kv.Key, kv.Value)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
