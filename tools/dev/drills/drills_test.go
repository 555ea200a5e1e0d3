// Package drills holds reliability drills: the real kms binary, as a
// separate process on a real unix socket, under load from
// tools/dev/bench/load while something goes wrong. Short by default (CI);
// -drill.long runs them longer and harder.
package drills

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/kek"
	"github.com/cmdkms/kms/src/testbin"
	"github.com/cmdkms/kms/tools/dev/bench/load"
)

var long = flag.Bool("drill.long", false, "run the long versions of the drills (minutes, not seconds)")

// scale picks the short (CI) or the long size of a drill.
func scale(short, long_ int) int {
	if *long {
		return long_
	}
	return short
}

func TestMain(m *testing.M) {
	// The bench drill starts this test binary as its do-nothing plugin, so
	// that the plugin is a process of its own, as under tools/dev/bench.
	if len(os.Args) == 4 && os.Args[1] == "serve-noop" && os.Args[2] == "--endpoint" {
		if err := load.ServeNoop(os.Args[3], slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	flag.Parse()
	os.Exit(testbin.Main(m))
}

// daemon is a running kms and a connection to it.
type daemon struct {
	*testbin.Proc
	*load.Client
}

func startKMS(t *testing.T, sock string, args ...string) *daemon {
	t.Helper()
	d := testbin.StartKMS(t, sock, args...)
	c, err := load.Dial("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &daemon{d, c}
}

// writeKeyring replaces path atomically with a text keyring, keys[0]
// primary, and returns the primary's key_id.
func writeKeyring(t *testing.T, path string, keys ...[]byte) string {
	t.Helper()
	testbin.WriteKeyring(t, path, keys...)
	k, err := kek.NewKey(bytes.Clone(keys[0]))
	if err != nil {
		t.Fatal(err)
	}
	return k.ID.String()
}

// object is one DEK that a daemon acknowledged encrypting, through v1
// (V1 set) or v2 (V2 set).
type object struct {
	Plain []byte
	V1    []byte
	V2    *v2.EncryptResponse
}

// store collects acknowledged objects from concurrent writers.
type store struct {
	mu   sync.Mutex
	objs []object
}

func (s *store) add(o object) {
	s.mu.Lock()
	s.objs = append(s.objs, o)
	s.mu.Unlock()
}

func (s *store) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.objs)
}

// at returns object i mod len, or false while there is none.
func (s *store) at(i int) (object, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.objs) == 0 {
		return object{}, false
	}
	return s.objs[i%len(s.objs)], true
}

func (s *store) all() []object {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]object(nil), s.objs...)
}

// write encrypts a fresh DEK through v1 (even seq) or v2 (odd) and keeps
// it once the daemon answers.
func write(ctx context.Context, c *load.Client, s *store, seq int) error {
	o := object{Plain: testbin.NewKey()}
	if seq%2 == 0 {
		r, err := c.V1.Encrypt(ctx, &v1beta1.EncryptRequest{Version: load.V1APIVersion, Plain: o.Plain})
		if err != nil {
			return err
		}
		o.V1 = r.Cipher
	} else {
		r, err := c.V2.Encrypt(ctx, &v2.EncryptRequest{Plaintext: o.Plain, Uid: "drill"})
		if err != nil {
			return err
		}
		o.V2 = r
	}
	s.add(o)
	return nil
}

// read decrypts o through the API that wrote it and checks the answer.
func read(ctx context.Context, c *load.Client, o object) error {
	var p []byte
	if o.V1 != nil {
		r, err := c.V1.Decrypt(ctx, &v1beta1.DecryptRequest{Version: load.V1APIVersion, Cipher: o.V1})
		if err != nil {
			return err
		}
		p = r.Plain
	} else {
		r, err := c.V2.Decrypt(ctx, &v2.DecryptRequest{Ciphertext: o.V2.Ciphertext, KeyId: o.V2.KeyId, Uid: "drill"})
		if err != nil {
			return err
		}
		p = r.Plaintext
	}
	if !bytes.Equal(p, o.Plain) {
		return load.ErrWrongPlaintext
	}
	return nil
}

// mix runs 16 callers against c in the background until the returned stop
// is called, which returns the run's Result: even seqs write a fresh DEK
// into objs, odd ones read back the acknowledged object objs.at(pick(seq)).
func mix(c *load.Client, objs *store, pick func(seq int) int) (stop func() *load.Result) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var r *load.Result
	wg.Go(func() {
		r = load.Run(ctx, 16, math.MaxInt, func(ctx context.Context, _, seq int) error {
			if seq%2 == 0 {
				return write(ctx, c, objs, seq/2)
			}
			o, ok := objs.at(pick(seq))
			if !ok {
				return nil
			}
			return read(ctx, c, o)
		})
	})
	return func() *load.Result {
		cancel()
		wg.Wait()
		return r
	}
}

// readAll checks every object in s against c, from several callers.
func readAll(t *testing.T, c *load.Client, objs []object) {
	t.Helper()
	r := load.Run(context.Background(), 16, len(objs), func(ctx context.Context, _, seq int) error {
		return read(ctx, c, objs[seq])
	})
	if r.Requests != len(objs) || r.Failed() > 0 {
		t.Fatalf("read back %d of %d objects; failures: %v", r.Requests-r.Failed(), len(objs), r.Failures)
	}
}

// shortSock is a socket path in a new short temp dir (Bazel's TEST_TMPDIR
// is too long for a unix socket).
func shortSock(t *testing.T) (dir, sock string) {
	dir = testbin.ShortDir(t)
	return dir, filepath.Join(dir, "kms.sock")
}
