package main

import (
	"strings"
	"testing"
)

func TestUsage(t *testing.T) {
	var out, errs strings.Builder
	if code := run([]string{"--help"}, &out, &errs); code != 0 {
		t.Fatalf("--help: exit %d %s", code, errs.String())
	}
	for _, f := range []string{"--kms ", "--kms-endpoint", "--noop-endpoint", "--callers", "--requests", "--rounds", "--kek-delay", "--storm ", "--rss-requests", "--fips140-only", "--kms-fips", "serve-noop"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("--help does not mention %s", f)
		}
	}
	t.Setenv("KMS_BINARY", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no kms binary"},
		{[]string{"--kms", "/x/kms", "--callers", "0"}, "must be positive"},
		{[]string{"--kms", "/x/kms", "--requests", "10"}, "at least --callers"},
		{[]string{"--kms-endpoint", "unix:///k.sock"}, "needs --kms-pid"},
		{[]string{"--kms-endpoint", "/k.sock", "--kms-pid", "1"}, "want unix:///absolute/path"},
		{[]string{"--kms-endpoint", "unix:///k.sock", "--kms-pid", "1", "--fips140-only"}, "needs --kms"},
		{[]string{"--kms", "/x/kms", "--kms-fips", "/x/kms_fips"}, "give both"},
		{[]string{"--kms", "/x/kms", "--noop-endpoint", "unix:///n.sock"}, "needs --noop-pid"},
		{[]string{"--kms", "/x/kms", "--calls", "v1dec,v9"}, `unknown call "v9"`},
		{[]string{"--kms", "/x/kms", "now"}, `unexpected argument "now"`},
		{[]string{"--kms", "/x/kms", "--colers", "1"}, "unknown flag: --colers"},
		{[]string{"serve-noop"}, "--endpoint is required"},
	} {
		var out, errs strings.Builder
		if code := run(tc.args, &out, &errs); code != 2 || !strings.Contains(errs.String(), tc.want) {
			t.Errorf("%q: exit %d, %q; want 2 and %q", tc.args, code, errs.String(), tc.want)
		}
	}
}
