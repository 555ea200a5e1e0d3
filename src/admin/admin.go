// Package admin serves --health-address: HTTP /healthz (the process is
// up), /readyz (health.Ready) and /metrics, for probes and scrapers.
package admin

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/cmdkms/kms/src/health"
)

// Listen opens address (host:port). There is no authentication: when the
// address is not a loopback one, the endpoints, /metrics included, are
// reachable from the network, which is allowed (node-local scrapers) but
// warned about.
func Listen(address string, log *slog.Logger) (net.Listener, error) {
	l, err := net.Listen("tcp", address)
	if err != nil {
		return nil, fmt.Errorf("--health-address: %w", err)
	}
	if a, ok := l.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
		log.Warn("--health-address is not a loopback address: /healthz, /readyz and /metrics are reachable "+
			"from the network, without authentication; prefer 127.0.0.1", "address", l.Addr().String())
	}
	return l, nil
}

// NewServer returns the HTTP server of the endpoints, with timeouts that
// keep a slow client from holding it.
func NewServer(keys health.Cipher, metrics http.Handler, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		id, err := health.Ready(keys)
		if err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok: primary key_id %s\n", id)
	})
	mux.Handle("GET /metrics", metrics)
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
