// Package prometheus holds the alerting rules for the daemon's metrics;
// this test checks them with Prometheus's own promtool: that they load,
// and that each fires (and stays quiet) on the input series of its
// scenario in kms-alerts_test.yaml.
package prometheus

import (
	"os"
	"os/exec"
	"testing"
)

func promtool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p
	}
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found: install it from Debian's prometheus package or set $PROMTOOL (.ci/run installs it)")
	}
	return p
}

func TestAlertRules(t *testing.T) {
	tool := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", "kms-alerts.yaml"},
		{"test", "rules", "kms-alerts_test.yaml"},
	} {
		out, err := exec.Command(tool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}
