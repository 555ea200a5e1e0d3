// Command bench measures the kms daemon against a do-nothing plugin on the
// same transport, in the same run: throughput, latency, the server's CPU
// time per request, memory, behaviour during a slow KEK refresh and a
// start-up storm. `bench serve-noop` is the do-nothing plugin.
package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/src/cli"
	"github.com/cmdkms/kms/src/process"
	"github.com/cmdkms/kms/tools/dev/bench/load"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `bench: load the kms daemon and a do-nothing plugin alike and print both side by side.

Usage:
  bench [flags]                               start both servers and run every phase
  bench --kms-endpoint unix:///k.sock --kms-pid N --noop-endpoint unix:///n.sock --noop-pid N
                                              measure servers that already run
  bench serve-noop --endpoint unix:///path    serve the do-nothing plugin (bench starts it so)

Under Bazel (tools/bazel run //tools/dev/bench -- FLAGS) --kms defaults to the kms built with it;
paths given to it are taken relative to the runfiles, so give absolute ones.

Flags:
`

// run returns the exit code: 0 all targets met, 1 missed or failed, 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "serve-noop" {
		return serveNoop.Run(args[1:], stdout, stderr)
	}
	return cli.Command{Name: "bench", Usage: usage, Flags: func(fs *pflag.FlagSet) func([]string) error {
		cfg := load.Config{Progress: stderr}
		fs.StringVar(&cfg.KMS, "kms", os.Getenv("KMS_BINARY"), "kms binary to start (default $KMS_BINARY)")
		fs.StringVar(&cfg.KMSEndpoint, "kms-endpoint", "", "measure the kms daemon already serving here instead of starting one")
		fs.IntVar(&cfg.KMSPID, "kms-pid", 0, "its process id, for /proc (required with --kms-endpoint)")
		fs.StringVar(&cfg.NoopEndpoint, "noop-endpoint", "", "measure the do-nothing plugin already serving here instead of starting one")
		fs.IntVar(&cfg.NoopPID, "noop-pid", 0, "its process id (required with --noop-endpoint)")
		fs.StringVar(&cfg.Mode, "mode", "aesgcm", "kms --mode: aesgcm or aescbc")
		kinds := fs.String("calls", "v1enc,v1dec,v2enc,v2dec,status", "calls each caller makes in turn")
		fs.IntVar(&cfg.Callers, "callers", 64, "concurrent callers")
		fs.IntVar(&cfg.Requests, "requests", 30000, "requests per server per round")
		fs.IntVar(&cfg.Rounds, "rounds", 10, "rounds; each measures both servers, alternating which goes first, so that changes in the machine's load hit both alike")
		fs.IntVar(&cfg.Corpus, "corpus", 1000, "distinct DEKs that decrypts cycle through")
		fs.DurationVar(&cfg.KEKDelay, "kek-delay", 2*time.Second, "how long the KEK command takes in the refresh phase (0 skips the phase)")
		fs.DurationVar(&cfg.RefreshEvery, "refresh-every", 500*time.Millisecond, "SIGHUP interval in the refresh phase; a run in progress absorbs them")
		fs.IntVar(&cfg.StormRequests, "storm", 10000, "v1 decrypts in the start-up storm (0 skips it)")
		fs.IntVar(&cfg.StormCallers, "storm-callers", 64, "callers in the start-up storm")
		fs.IntVar(&cfg.RSSRequests, "rss-requests", 1000000, "requests between the two RSS readings (0 skips them)")
		fs.BoolVar(&cfg.Security, "security", true, "also run kms with --audit-log, with --allow-uid, and with both in the steady rounds (kms-audit-log, kms-allow-uid, kms-both rows)")
		fs.BoolVar(&cfg.FIPS140Only, "fips140-only", false, "also measure kms under GODEBUG=fips140=only in the steady rounds: one more row, its server CPU per request beside plain kms's")
		fs.StringVar(&cfg.KMSFIPS, "kms-fips", "", "the binary --fips140-only measures instead of --kms: a FIPS build (//:kms_fips, the certified Go Cryptographic Module); its row is kms_fips-fips140-only")
		fs.StringVar(&cfg.Dir, "dir", "", "directory for sockets, keyring and server logs (default: a new one under $TMPDIR, removed after)")
		return func(args []string) error {
			if err := check(args, &cfg, *kinds); err != nil {
				return err
			}
			if cfg.Dir == "" {
				dir, err := os.MkdirTemp("", "kmsbench")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				cfg.Dir = dir
			}
			// The load generator shares the CPUs with the servers it measures:
			// the less it spends collecting garbage, the more they get.
			process.TuneGC()
			rep, err := load.Bench(cfg)
			if err != nil {
				return err
			}
			rep.Print(stdout)
			return rep.Check()
		}
	}}.Run(args, stdout, stderr)
}

// check validates the flags and resolves paths; it starts the do-nothing
// plugin as this same binary, so that it is a process of its own.
func check(args []string, cfg *load.Config, kinds string) error {
	if err := cli.NoArgs(args); err != nil {
		return err
	}
	var err error
	if cfg.Kinds, err = load.ParseKinds(kinds); err != nil {
		return cli.Usagef("--calls: %w", err)
	}
	if cfg.Callers < 1 || cfg.Requests < cfg.Callers || cfg.Rounds < 1 || cfg.Corpus < 1 || cfg.StormCallers < 1 {
		return cli.Usagef("--callers, --rounds, --corpus and --storm-callers must be positive and --requests at least --callers")
	}
	if cfg.KEKDelay > 0 && cfg.RefreshEvery <= 0 {
		return cli.Usagef("--refresh-every must be positive")
	}
	switch {
	case cfg.KMSEndpoint != "" && cfg.KMSPID <= 0:
		return cli.Usagef("--kms-endpoint needs --kms-pid")
	case cfg.KMSEndpoint != "" && cfg.FIPS140Only:
		return cli.Usagef("--fips140-only starts a second kms: it needs --kms, not --kms-endpoint")
	case cfg.KMSFIPS != "" && !cfg.FIPS140Only:
		return cli.Usagef("--kms-fips is the binary of --fips140-only's row: give both")
	case cfg.KMSEndpoint != "":
		cfg.KMS = ""
	case cfg.KMS == "":
		return cli.Usagef("no kms binary: give --kms (go build -o /tmp/kms ./src/cmd/kms) or --kms-endpoint")
	default:
		if cfg.KMS, err = filepath.Abs(cfg.KMS); err != nil {
			return err
		}
	}
	if cfg.KMSFIPS != "" {
		if cfg.KMSFIPS, err = filepath.Abs(cfg.KMSFIPS); err != nil {
			return err
		}
	}
	switch {
	case cfg.NoopEndpoint != "" && cfg.NoopPID <= 0:
		return cli.Usagef("--noop-endpoint needs --noop-pid")
	case cfg.NoopEndpoint == "":
		self, err := os.Executable()
		if err != nil {
			return err
		}
		cfg.NoopCommand = []string{self, "serve-noop"}
	}
	for _, e := range []string{cfg.KMSEndpoint, cfg.NoopEndpoint} {
		if e != "" && !strings.HasPrefix(e, "unix:///") {
			return cli.Usagef("endpoint %q: want unix:///absolute/path", e)
		}
	}
	if cfg.Dir != "" {
		cfg.Dir, err = filepath.Abs(cfg.Dir)
	}
	return err
}

// serveNoop is `bench serve-noop`: the do-nothing plugin, until SIGTERM.
var serveNoop = cli.Command{Name: "bench serve-noop", Usage: "bench serve-noop: serve the do-nothing plugin until SIGTERM.\n\nFlags:\n",
	Flags: func(fs *pflag.FlagSet) func([]string) error {
		endpoint := fs.String("endpoint", "", "unix:///path of the socket to create (required)")
		return func(args []string) error {
			if *endpoint == "" {
				return cli.Usagef("--endpoint is required")
			}
			if err := cli.NoArgs(args); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			if err := load.ServeNoop(*endpoint, log); err != nil {
				log.Error("do-nothing plugin stopped", "err", err)
				return cli.ErrReported
			}
			return nil
		}
	}}
