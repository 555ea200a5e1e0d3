package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cmdkms/kms/tools/helpers/helpertest"
)

var benchValues = flag.Int("census-bench", 0, "TestCensusBenchmark: this many values in a real etcd (docs/performance.md; 0 skips it)")

// lineCounter counts the non-empty lines written to it, keeping none.
type lineCounter struct {
	n    int
	prev byte
}

func (c *lineCounter) Write(p []byte) (int, error) {
	for _, b := range p {
		if b == '\n' && c.prev != '\n' && c.prev != 0 {
			c.n++
		}
		c.prev = b
	}
	return len(p), nil
}

// TestCensusBenchmark writes -census-bench values into a real etcd and
// reads them all with kek-census at three page sizes, beside etcdctl
// reading the keys only and then every value, each in one response: values
// per second and each process's peak RSS (wait4's ru_maxrss). Run it with
//
//	go test ./tools/helpers/kek-census -run CensusBenchmark -census-bench 200000 -v
func TestCensusBenchmark(t *testing.T) {
	n := *benchValues
	if n == 0 {
		t.Skip("give -census-bench 200000 to run it (docs/performance.md)")
	}
	e := startEtcd(t, false, "--max-txn-ops", "1000", "--quota-backend-bytes", strconv.Itoa(8<<30))
	old, cur := newKEK(t), newKEK(t)
	const batch = 1000
	write := func(from, to int) {
		start := time.Now()
		for i := from; i < to; i += batch {
			var kvs []string
			for j := i; j < min(to, i+batch); j++ {
				// About the size of a small Secret's KMS v2 value; one in
				// ten still under the old key, as after an interrupted rewrite.
				k, res := cur, "secrets"
				if j%10 == 0 {
					k, res = old, "configmaps"
				}
				kvs = append(kvs, fmt.Sprintf("/registry/%s/ns-%03d/obj-%07d", res, j%1000, j), kmsV2Value(t, "kms-v2", k))
			}
			e.put(t, batch, kvs...)
		}
		t.Logf("wrote %d values in %v", to-from, time.Since(start).Round(time.Millisecond))
	}

	census, etcdctl := helpertest.KekCensus(t), etcdctlBinary(t)
	type run struct {
		name string
		bin  string
		args []string
	}
	stream := run{"kek-census (etcd's range stream)", census, nil}
	values := run{"etcdctl get --prefix --print-value-only", etcdctl, []string{"get", "/registry/", "--prefix", "--print-value-only"}}
	measure := func(n int, runs ...run) {
		// A first census warms etcd's caches for every run alike.
		exec.Command(census, "--endpoints", e.endpoint).Run()
		t.Logf("%d values in a real etcd v3.7.0 (KMS v2 values of %d bytes):", n, len(kmsV2Value(t, "kms-v2", cur))+len("/registry/secrets/ns-000/obj-0000000"))
		t.Logf("%-42s %10s %12s %14s", "reader", "seconds", "values/s", "peak RSS MiB")
		for _, r := range runs {
			cmd := exec.Command(r.bin, append(r.args, "--endpoints", e.endpoint)...)
			var out bytes.Buffer
			var lines lineCounter
			if r.bin == census {
				cmd.Args = append(cmd.Args, "--json")
				cmd.Stdout = &out
			} else {
				cmd.Stdout = &lines
			}
			cmd.Stderr = &out
			start := time.Now()
			if err := cmd.Run(); err != nil {
				t.Fatalf("%s: %v\n%s", r.name, err, out.String())
			}
			d := time.Since(start)
			got := lines.n
			if r.bin == census {
				var res Result
				if err := json.Unmarshal(out.Bytes(), &res); err != nil {
					t.Fatalf("%s: %v", r.name, err)
				}
				got = int(res.Values)
			}
			// Values are binary, newlines included: that run is not counted.
			if r.name != values.name && got != n {
				t.Fatalf("%s: read %d values, want %d", r.name, got, n)
			}
			rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // KiB
			t.Logf("%-42s %10.2f %12.0f %14.1f", r.name, d.Seconds(), float64(n)/d.Seconds(), float64(rss)/1024)
		}
	}
	// A quarter first: kek-census's peak RSS must not grow with the store;
	// etcdctl's, reading everything in one response, does.
	write(0, n/4)
	measure(n/4, stream, values)
	write(n/4, n)
	measure(n, stream,
		run{"kek-census --page-size 1000", census, []string{"--page-size", "1000"}},
		run{"kek-census --page-size 10000", census, []string{"--page-size", "10000"}},
		run{"etcdctl get --prefix --keys-only", etcdctl, []string{"get", "/registry/", "--prefix", "--keys-only"}},
		values)
}
