package main

import (
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/cmdkms/kms/src/cli"
	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/keysource"
	"github.com/cmdkms/kms/src/peercred"
	"github.com/cmdkms/kms/src/process"
	"github.com/cmdkms/kms/src/socket"
	"github.com/cmdkms/kms/src/transport"
)

// minTimeout keeps the command from being run in a tight loop, as in 2018.
// Only test builds can lower it (testflags.go).
const minTimeout = time.Minute

// defineTestFlags adds the flags of test builds (testflags.go); a release
// build has none. It is set only at init: the kmstest tag, rather than a
// file for each side, keeps gazelle's view of the package whole.
var defineTestFlags = func(*pflag.FlagSet, *config) {}

// config is everything the flags decide.
type config struct {
	command         string
	timeout         time.Duration
	refreshInterval time.Duration
	commandTimeout  time.Duration
	endpoint        string
	socketMode      os.FileMode
	mode            codec.Mode
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        slog.Level
	showVersion     bool
	healthAddress   string
	mlock           process.Mlock
	allow           peercred.Policy
	auditLog        string
	// Fixed in a release build; flags of test builds (testflags.go).
	minTimeout  time.Duration
	idleTimeout time.Duration
}

const usageHead = `kms: a Kubernetes KMS plugin (KMS v1beta1 and v2 on one unix socket)
whose key encryption key comes from a command.

Usage:
  kms --command CMD [--endpoint unix:///path/kms.sock] [flags]
  kms check --command CMD    run the command once, print its key ids, exit
  kms status [--endpoint unix:///path/kms.sock]
                             ask a running daemon which keys it holds
  kms refresh [--endpoint unix:///path/kms.sock]
                             make a running daemon run its command now
  kms --version              print the version
Each has --help.

Without --endpoint the socket comes from systemd socket activation.
SIGHUP re-runs the command now; SIGTERM/SIGINT stop gracefully.

Flags:
`

// defineFlags defines the daemon's flags on fs. The config is complete
// once check, which validates the flags and the arguments left, succeeds.
func defineFlags(fs *pflag.FlagSet) (c *config, check func(args []string) error) {
	c = &config{minTimeout: minTimeout, idleTimeout: transport.IdleTimeout}
	fs.StringVar(&c.command, "command", "", "command that prints the KEK on stdout (required); run with /bin/sh -c when /bin/sh exists, else split on spaces and run directly")
	fs.DurationVar(&c.timeout, "timeout", time.Hour, "how long the KEK stays cached without a successful run of the command (1m to 8760h)")
	fs.DurationVar(&c.refreshInterval, "refresh-interval", 0, "how often the command runs while it succeeds (default --timeout/5)")
	fs.DurationVar(&c.commandTimeout, "command-timeout", keysource.DefaultCommandTimeout, "a run of the command that takes longer is killed with its process group")
	fs.StringVar(&c.endpoint, "endpoint", "", "unix:///path of the socket to create; empty: use the socket systemd passes (LISTEN_FDS)")
	socketMode := fs.String("socket-mode", "0600", "permissions (octal) of the socket file kms creates")
	mode := fs.String("mode", "aesgcm", "codec for new ciphertexts: aesgcm (authenticated, recommended), aescbc, or legacy (the 2018 daemon's format with the primary key, KMS v1 only, while 2018 daemons still run beside kms); decryption follows each ciphertext's header whatever this is")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGTERM/SIGINT, how long in-flight calls may take before they are cut off")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format on stderr: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.healthAddress, "health-address", "", "host:port for HTTP /healthz, /readyz and /metrics (e.g. 127.0.0.1:9464); empty: no HTTP listener")
	mlock := fs.String("mlock", string(process.MlockAuto), "lock memory so keys never reach swap: auto (where it is sure to work), required (or fail), off")
	allowUID := fs.String("allow-uid", "", "comma-separated user ids whose processes are served (e.g. 0, kube-apiserver's on kubeadm); others are disconnected at once. Empty (with --allow-gid empty): anyone who can open the socket")
	allowGID := fs.String("allow-gid", "", "comma-separated group ids whose processes are served (the caller's effective gid), besides --allow-uid's")
	fs.StringVar(&c.auditLog, "audit-log", "", "file to append one JSON line per Encrypt and Decrypt call to (who, which key, outcome); reopened on SIGHUP. Empty: no audit log")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	defineTestFlags(fs, c)

	return c, func(args []string) error {
		if c.showVersion {
			return nil
		}
		if err := cli.NoArgs(args); err != nil {
			return err
		}
		if c.command == "" {
			return cli.Usagef("--command is required")
		}
		// The floors are the daemon's, not the key cache's: they keep an
		// operator from running the command in a tight loop.
		if c.timeout < c.minTimeout {
			return cli.Usagef("--timeout %v is below the minimum of %v", c.timeout, c.minTimeout)
		}
		if c.refreshInterval == 0 {
			c.refreshInterval = c.timeout / keysource.RefreshDivisor
		}
		if least := c.minTimeout / 60; c.refreshInterval < least {
			return cli.Usagef("--refresh-interval %v must be at least %v", c.refreshInterval, least)
		}
		times := keysource.Config{Timeout: c.timeout, RefreshInterval: c.refreshInterval, CommandTimeout: c.commandTimeout}
		if err := times.Validate(); err != nil {
			return cli.Usagef("%w", err)
		}
		if c.idleTimeout <= 0 {
			return cli.Usagef("--idle-timeout %v must be positive", c.idleTimeout)
		}
		if c.shutdownTimeout <= 0 {
			return cli.Usagef("--shutdown-timeout %v must be positive", c.shutdownTimeout)
		}
		m, err := strconv.ParseUint(*socketMode, 8, 32)
		if err != nil {
			return cli.Usagef("--socket-mode %q: want octal permissions such as 0600 or 0660", *socketMode)
		}
		c.socketMode = os.FileMode(m)
		if err := socket.CheckMode(c.socketMode); err != nil {
			return cli.Usagef("--socket-mode %s: %w", *socketMode, err)
		}
		if c.mlock, err = process.ParseMlock(*mlock); err != nil {
			return cli.Usagef("--mlock %w", err)
		}
		if c.mode, err = codec.ParseMode(*mode); err != nil {
			return cli.Usagef("--mode: %w", err)
		}
		if c.allow.UIDs, err = peercred.ParseIDs(*allowUID); err != nil {
			return cli.Usagef("--allow-uid: %w", err)
		}
		if c.allow.GIDs, err = peercred.ParseIDs(*allowGID); err != nil {
			return cli.Usagef("--allow-gid: %w", err)
		}
		if c.logFormat != "text" && c.logFormat != "json" {
			return cli.Usagef("--log-format %q: want text or json", c.logFormat)
		}
		if err := c.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
			return cli.Usagef("--log-level %q: want debug, info, warn or error", *logLevel)
		}
		return nil
	}
}

func (c *config) logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
