// Command kms is a Kubernetes KMS plugin daemon: it serves KMS v1beta1 and
// v2 on a unix socket and gets its key encryption key from a command.
package main

import (
	"context"
	"errors"
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
	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/keysource"
	"github.com/cmdkms/kms/src/metrics"
	"github.com/cmdkms/kms/src/server"
)

// version is set at link time: -ldflags "-X main.version=v1.2.3".
var version string

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the exit code: 0 ok, 1 failure, 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "check" {
		return check(args[1:], stdout, stderr)
	}
	cfg, err := parseFlags(args, stdout)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "kms: %v\nRun 'kms --help' for usage.\n", err)
		return 2
	case cfg.showVersion:
		fmt.Fprintf(stdout, "kms %s %s\n", versionString(), runtime.Version())
		return 0
	}
	log := cfg.logger(stderr)
	server.SetGCPercent()
	if err := serve(cfg, log); err != nil {
		log.Error("kms stopped", "err", err)
		return 1
	}
	return 0
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

// serve runs the daemon until SIGTERM/SIGINT. The socket is opened before
// the command first runs so that a second daemon on the same path fails at
// once, without running the (possibly slow) KEK command.
func serve(cfg *config, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	l, err := server.Listen(cfg.endpoint, cfg.socketMode, log)
	if err != nil {
		return err
	}
	// Opened before the command runs too: a taken port fails at once.
	var hl net.Listener
	if cfg.healthAddress != "" {
		if hl, err = net.Listen("tcp", cfg.healthAddress); err != nil {
			l.Close()
			return fmt.Errorf("--health-address: %w", err)
		}
	}

	// The hooks are called from the first run of the command on, so what
	// they feed is set up before keysource.Start.
	met := metrics.New(versionString(), &v1beta1.KeyManagementService_ServiceDesc, &v2.KeyManagementService_ServiceDesc)
	gs := server.NewGRPCServer(grpc.UnaryInterceptor(met.UnaryInterceptor()))
	health := server.RegisterHealth(gs)
	keys, err := keysource.Start(keysource.Config{
		Command:        cfg.command,
		Timeout:        cfg.timeout,
		CommandTimeout: cfg.commandTimeout,
		Log:            log,
		Hooks:          hooks{met, health},
	})
	if err != nil {
		l.Close()
		if hl != nil {
			hl.Close()
		}
		return fmt.Errorf("the KEK command failed at start: %w", err)
	}
	defer keys.Close()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info("SIGHUP: running the KEK command now")
			keys.Refresh()
		}
	}()

	server.Register(gs, keys, cfg.mode, versionString())
	served := make(chan error, 2)
	go func() { served <- gs.Serve(l) }()
	var hs *http.Server
	if hl != nil {
		hs = &http.Server{
			Handler:           server.HTTPHandler(keys, cfg.mode, promhttp.HandlerFor(met.Registry, promhttp.HandlerOpts{})),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		go func() { served <- fmt.Errorf("health listener: %w", hs.Serve(hl)) }()
		log.Info("serving /healthz, /readyz and /metrics", "address", hl.Addr().String())
	}
	log.Info("serving KMS v1beta1 and v2", "socket", l.Addr().String(), "mode", cfg.mode.String(), "version", versionString())

	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight calls", "limit", cfg.shutdownTimeout)
	health.Shutdown()
	if hs != nil {
		hs.Close()
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
	log.Info("stopped: socket removed, keys dropped")
	return nil
}

// hooks passes the keysource's news to the metrics and the health service.
type hooks struct {
	met    *metrics.Metrics
	health *server.Health
}

func (h hooks) CommandRan(o keysource.Outcome, took time.Duration, end time.Time) {
	h.met.CommandRan(o, took, end)
}

func (h hooks) KeysChanged(set *codec.Set) {
	h.met.KeysChanged(set)
	h.health.SetLoaded(set != nil)
}
