// Command kms is a Kubernetes KMS plugin daemon: it serves KMS v1beta1 and
// v2 on a unix socket and gets its key encryption key from a command.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/cmdkms/kms/src/keysource"
	"github.com/cmdkms/kms/src/server"
)

// version is set at link time: -ldflags "-X main.version=v1.2.3".
var version string

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the exit code: 0 ok, 1 failure, 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
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
	keys, err := keysource.Start(keysource.Config{
		Command:        cfg.command,
		Timeout:        cfg.timeout,
		CommandTimeout: cfg.commandTimeout,
		Log:            log,
	})
	if err != nil {
		l.Close()
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

	gs := grpc.NewServer()
	server.Register(gs, keys, cfg.mode, versionString())
	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	log.Info("serving KMS v1beta1 and v2", "socket", l.Addr().String(), "mode", cfg.mode.String(), "version", versionString())

	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight calls", "limit", cfg.shutdownTimeout)
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
