package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/src/codec"
)

// minTimeout keeps the command from being run in a tight loop, as in 2018.
const minTimeout = time.Minute

// config is everything the flags decide.
type config struct {
	command         string
	timeout         time.Duration
	commandTimeout  time.Duration
	endpoint        string
	socketMode      os.FileMode
	mode            codec.Mode
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        slog.Level
	showVersion     bool
	healthAddress   string
}

const usageHead = `kms: a Kubernetes KMS plugin (KMS v1beta1 and v2 on one unix socket)
whose key encryption key comes from a command.

Usage:
  kms --command CMD [--endpoint unix:///path/kms.sock] [flags]
  kms check --command CMD    run the command once, print its key ids, exit

Without --endpoint the socket comes from systemd socket activation.
SIGHUP re-runs the command now; SIGTERM/SIGINT stop gracefully.

Flags:
`

// parseFlags returns pflag.ErrHelp after printing help to stdout.
func parseFlags(args []string, stdout io.Writer) (*config, error) {
	c := &config{}
	fs := pflag.NewFlagSet("kms", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by the caller, once
	fs.SortFlags = false
	fs.StringVar(&c.command, "command", "", "command that prints the KEK on stdout (required); run with /bin/sh -c when /bin/sh exists, else split on spaces and run directly")
	fs.DurationVar(&c.timeout, "timeout", time.Hour, "how long the KEK stays cached without a successful run of the command (min 1m); it is refreshed from 3/4 of this on")
	fs.DurationVar(&c.commandTimeout, "command-timeout", 30*time.Second, "a run of the command that takes longer is killed with its process group")
	fs.StringVar(&c.endpoint, "endpoint", "", "unix:///path of the socket to create; empty: use the socket systemd passes (LISTEN_FDS)")
	socketMode := fs.String("socket-mode", "0600", "permissions (octal) of the socket file kms creates")
	mode := fs.String("mode", "aesgcm", "codec for new ciphertexts: aesgcm (authenticated, recommended) or aescbc; decryption follows each ciphertext's header whatever this is")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGTERM/SIGINT, how long in-flight calls may take before they are cut off")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format on stderr: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.healthAddress, "health-address", "", "host:port for HTTP /healthz, /readyz and /metrics (e.g. 127.0.0.1:9464); empty: no HTTP listener")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	// Tests of purge and resume with the real binary cannot wait a minute
	// per timeout; nothing else should lower the floor.
	floor := fs.Duration("min-timeout", minTimeout, "lowest --timeout accepted (for tests only)")
	fs.MarkHidden("min-timeout")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, usageHead+fs.FlagUsages())
		}
		return nil, err
	}
	if c.showVersion {
		return c, nil
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.command == "" {
		return nil, errors.New("--command is required")
	}
	if c.timeout < *floor {
		return nil, fmt.Errorf("--timeout %v is below the minimum of %v", c.timeout, *floor)
	}
	if c.commandTimeout <= 0 || c.commandTimeout >= c.timeout {
		return nil, fmt.Errorf("--command-timeout %v must be positive and below --timeout %v", c.commandTimeout, c.timeout)
	}
	if c.shutdownTimeout <= 0 {
		return nil, fmt.Errorf("--shutdown-timeout %v must be positive", c.shutdownTimeout)
	}
	m, err := strconv.ParseUint(*socketMode, 8, 32)
	if err != nil || m > 0o777 {
		return nil, fmt.Errorf("--socket-mode %q: want octal permissions such as 0600 or 0660", *socketMode)
	}
	c.socketMode = os.FileMode(m)
	if c.mode, err = codec.ParseMode(*mode); err != nil {
		return nil, fmt.Errorf("--mode: %w", err)
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return nil, fmt.Errorf("--log-format %q: want text or json", c.logFormat)
	}
	if err := c.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	return c, nil
}

func (c *config) logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
