// Command kms is a Kubernetes KMS plugin daemon: it serves KMS v1beta1 and
// v2 on a unix socket and gets its key encryption key from a command.
package main

import (
	"context"
	"crypto/fips140"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/cmdkms/kms/proto/v1beta1"
	v2 "github.com/cmdkms/kms/proto/v2"
	"github.com/cmdkms/kms/src/admin"
	"github.com/cmdkms/kms/src/audit"
	"github.com/cmdkms/kms/src/cli"
	"github.com/cmdkms/kms/src/health"
	"github.com/cmdkms/kms/src/keysource"
	"github.com/cmdkms/kms/src/metrics"
	"github.com/cmdkms/kms/src/peercred"
	"github.com/cmdkms/kms/src/process"
	"github.com/cmdkms/kms/src/service"
	"github.com/cmdkms/kms/src/socket"
	"github.com/cmdkms/kms/src/transport"
)

// version is set at link time: -ldflags "-X main.version=v1.2.3".
var version string

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the exit code: 0 ok, 1 failure, 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "check":
			return checkCommand(stdout, stderr).Run(args[1:], stdout, stderr)
		case "status":
			return statusCommand(stdout, false).Run(args[1:], stdout, stderr)
		case "refresh":
			return statusCommand(stdout, true).Run(args[1:], stdout, stderr)
		}
	}
	return cli.Command{Name: "kms", Usage: usageHead, Flags: func(fs *pflag.FlagSet) func([]string) error {
		cfg, check := defineFlags(fs)
		return func(args []string) error {
			if err := check(args); err != nil {
				return err
			}
			if cfg.showVersion {
				fmt.Fprintf(stdout, "kms %s %s\nfips140: %s\n", versionString(), runtime.Version(), fipsString())
				return nil
			}
			log := cfg.logger(stderr)
			if err := serve(cfg, log); err != nil {
				log.Error("kms stopped", "err", err)
				return cli.ErrReported
			}
			return nil
		}
	}}.Run(args, stdout, stderr)
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// fipsString names the Go Cryptographic Module the binary was built with
// ("latest": the Go release's own; "v1.0.0": the CMVP-certified snapshot,
// GOFIPS140) and whether FIPS 140-3 mode is on (GODEBUG fips140=on or only,
// or the GOFIPS140 build's default).
func fipsString() string {
	if fips140.Enabled() {
		return fips140.Version() + " enabled"
	}
	return fips140.Version() + " disabled"
}

// serve runs the daemon until SIGTERM/SIGINT.
func serve(cfg *config, log *slog.Logger) error {
	// Signals first: Go's default for SIGHUP is to exit, and the first run
	// of the command may take long.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	process.TuneGC()
	if err := process.Harden(cfg.mlock, log); err != nil {
		return err
	}
	if process.ReapOrphans() {
		log.Info("reaping orphaned processes (kms is PID 1 or a subreaper)")
	}

	// The socket is opened before the command first runs, so that a second
	// daemon on the same path fails at once, without running the (possibly
	// slow) KEK command; and so is the health port.
	l, err := socket.Listen(cfg.endpoint, cfg.socketMode, log)
	if err != nil {
		return err
	}
	defer l.Close()
	var hl net.Listener
	if cfg.healthAddress != "" {
		if hl, err = admin.Listen(cfg.healthAddress, log); err != nil {
			return err
		}
		defer hl.Close()
	}

	// The hooks are called from the first run of the command on, so what
	// they feed is set up before the keys are.
	met := metrics.New(versionString(), &v1beta1.KeyManagementService_ServiceDesc, &v2.KeyManagementService_ServiceDesc)
	met.Settings(cfg.timeout, cfg.refreshInterval)
	var al *audit.Log
	var rec metrics.Recorder
	if cfg.auditLog != "" {
		if al, err = audit.Open(cfg.auditLog, log); err != nil {
			return err
		}
		// Run when serve returns, after the server stopped: the last calls'
		// records are written.
		defer al.Close()
		met.Registry.MustRegister(al.Collectors()...)
		rec = al
	}
	// The callers' credentials are read only when something uses them.
	peers := cfg.allow.Restricts() || rec != nil
	opts := []grpc.ServerOption{grpc.UnaryInterceptor(met.UnaryInterceptor(rec))}
	if peers {
		opts = append(opts, grpc.Creds(peercred.Credentials{}))
	}
	gs := transport.NewServer(cfg.idleTimeout, opts...)
	hs := health.Register(gs)
	keys, err := keysource.New(keysource.Config{
		Command:         cfg.command,
		Timeout:         cfg.timeout,
		RefreshInterval: cfg.refreshInterval,
		CommandTimeout:  cfg.commandTimeout,
		Mode:            cfg.mode,
		Log:             log,
		Hooks:           hooks{met, hs},
	})
	if err != nil {
		return err
	}
	defer keys.Close()
	go func() {
		for range hup {
			if al != nil {
				log.Info("SIGHUP: reopening the audit log")
				al.Reopen()
			}
			log.Info("SIGHUP: running the KEK command")
			keys.Refresh()
		}
	}()
	if err := keys.Start(ctx); err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before the first KEK was loaded: the KEK command was killed", "err", err)
			return nil
		}
		return fmt.Errorf("the KEK command failed at start: %w", err)
	}

	service.Register(gs, keys, versionString())
	health.RegisterStatus(gs, keys, versionString())
	conns := transport.Limit(l)
	met.Connections(conns.Open)
	var accepted net.Listener = conns
	if peers {
		pl := peercred.Listen(conns, cfg.allow, log)
		met.Registry.MustRegister(pl.Collector())
		accepted = pl
	}
	served := make(chan error, 2)
	go func() { served <- gs.Serve(accepted) }()
	var hsrv *http.Server
	if hl != nil {
		hsrv = admin.NewServer(keys, promhttp.HandlerFor(met.Registry, promhttp.HandlerOpts{}), log)
		go func() { served <- fmt.Errorf("health listener: %w", hsrv.Serve(hl)) }()
		log.Info("serving /healthz, /readyz and /metrics", "address", hl.Addr().String())
	}
	log.Info("serving KMS v1beta1 and v2", "socket", l.Addr().String(), "mode", cfg.mode.String(), "version", versionString(), "fips140", fipsString())

	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight calls", "limit", cfg.shutdownTimeout)
	hs.Shutdown()
	if hsrv != nil {
		hsrv.Close()
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.shutdownTimeout):
		log.Warn("in-flight calls did not finish in time; cutting them off")
		gs.Stop()
		<-stopped
	}
	keys.Close()
	log.Info("stopped: socket removed, keys wiped")
	return nil
}

// hooks passes the keysource's news to the metrics and the health service.
type hooks struct {
	met    *metrics.Metrics
	health *health.Health
}

func (h hooks) CommandRan(o keysource.Outcome, took time.Duration, end time.Time) {
	h.met.CommandRan(o, took, end)
}

func (h hooks) KeysChanged(keys []keysource.KeyInfo) {
	h.met.KeysChanged(keys)
	h.health.SetLoaded(keys != nil)
}
