package backends

import (
	"path/filepath"
	"testing"
	"time"
)

// thresholdPolicy is docs/backends/threshold.md's: any two of tang A,
// tang B and the TPM (PCR 7).
func thresholdPolicy(a, b *tang) string {
	return `{"t":2,"pins":{"tang":[{"url":"` + a.url + `"},{"url":"` + b.url + `"}],"tpm2":` + tpm2Policy + `}}`
}

// The threshold recipe (docs/backends/threshold.md): Clevis's SSS pin splits
// the keyring's key between two tang servers and the TPM, any two of which
// unseal it. One tang down: the node keeps working. Both down: cache,
// purge, resume. A changed PCR 7 with both tangs up: still working. Another
// TPM with one tang: nothing; with both tangs: the keyring, as documented.
func TestThreshold(t *testing.T) {
	needTang(t)
	needTPM(t)
	a, b := startTang(t), startTang(t)
	tpm := startSWTPM(t)
	tpm.use()
	creds := t.TempDir()
	ring, primary := newKeyring(t)
	seal := func(ring []byte) {
		writeFile(t, filepath.Join(creds, "kek.jwe"), run(t, nil, ring, "clevis", "encrypt", "sss", thresholdPolicy(a, b), "-y"))
	}
	seal(ring)
	command := dropinCommand(t, "threshold.conf", creds)
	check(t, command, primary)

	// --log-level debug: a successful run is logged only there.
	d := startDaemon(t, command, 30*time.Second, 20*time.Second, "--log-level", "debug")
	d.roundTrip(t, "all up", primary)

	// A down: B and the TPM are two of three.
	a.stop()
	d.refreshes(t)
	d.roundTrip(t, "tang A down", primary)

	// A server that accepts and never answers: clevis exits with B's and
	// the TPM's shares, leaving A's tang pin waiting; kms kills it.
	a.hang()
	d.refreshes(t)
	d.roundTrip(t, "tang A hung", primary)
	a.stop()

	// B down as well: only the TPM is left, one of two. A comes back.
	d.outage(t, primary, b.stop, a.start)

	b.start()
	tpm.changePCR7()
	d.refreshes(t)
	d.roundTrip(t, "PCR 7 changed, both tangs up", primary)
	tpm.reboot()

	// The disk in another machine, with one tang reachable: one share of two.
	other := startSWTPM(t)
	b.stop()
	out := fails(t, other.env(), nil, "/bin/sh", "-c", command)
	t.Logf("the sealed keyring with another TPM and one tang: %s", out)
	// With both tangs it opens: two shares of three, the documented price.
	b.start()
	run(t, other.env(), nil, "/bin/sh", "-c", command)

	d.rotate(t, primary, seal)
	d.stop(t, ring)
}
