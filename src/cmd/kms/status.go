package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	statuspb "github.com/cmdkms/kms/proto/status"
	"github.com/cmdkms/kms/src/cli"
	"github.com/cmdkms/kms/src/keysource"
)

// defaultEndpoint is the socket the systemd units, the static pod and the
// EncryptionConfigurations in release/deploy use.
const defaultEndpoint = "unix:///run/kms/kms.sock"

const statusUsage = `kms status: ask a running daemon, over its socket, which keys it holds
and how its KEK command fares. Exit status: 0 serving, 1 not serving
(keys purged) or not reachable, 2 usage error.

Usage:
  kms status [--endpoint unix:///path] [--output text|json]

Flags:
`

const refreshUsage = `kms refresh: make a running daemon run its KEK command now, as SIGHUP
does, wait for that run and print the status after it. For containers
without a shell or kill: kubectl exec POD -- kms refresh. Exit status: 0 the
run succeeded, 1 it failed (the daemon keeps serving its cached keys) or the
daemon is not reachable, 2 usage error.

Usage:
  kms refresh [--endpoint unix:///path] [--output text|json] [--wait D]

Flags:
`

// statusCommand is `kms status`, or `kms refresh` when refresh is set.
func statusCommand(stdout io.Writer, refresh bool) cli.Command {
	name, usage := "kms status", statusUsage
	if refresh {
		name, usage = "kms refresh", refreshUsage
	}
	return cli.Command{Name: name, Usage: usage, Flags: func(fs *pflag.FlagSet) func([]string) error {
		endpoint := fs.String("endpoint", defaultEndpoint, "the daemon's socket")
		output := fs.String("output", "text", "text or json")
		wait := fs.Duration("wait", keysource.DefaultCommandTimeout+10*time.Second, "how long to wait for the daemon to answer")
		return func(args []string) error {
			if err := cli.NoArgs(args); err != nil {
				return err
			}
			path, ok := strings.CutPrefix(*endpoint, "unix://")
			if !ok || !strings.HasPrefix(path, "/") {
				return cli.Usagef("--endpoint %q: want unix:///absolute/path", *endpoint)
			}
			if *output != "text" && *output != "json" {
				return cli.Usagef("--output %q: want text or json", *output)
			}
			if *wait <= 0 {
				return cli.Usagef("--wait %v must be positive", *wait)
			}
			return queryStatus(*endpoint, *output, *wait, refresh, stdout)
		}
	}}
}

// nodeStatus is what `kms status --output json` prints.
type nodeStatus struct {
	Endpoint        string       `json:"endpoint"`
	Serving         bool         `json:"serving"`
	Primary         string       `json:"primary,omitempty"`
	Keys            []heldKey    `json:"keys"`
	LastSuccess     time.Time    `json:"last_success"`
	FailedRuns      int64        `json:"failed_runs"`
	LastError       string       `json:"last_error,omitempty"`
	Timeout         jsonDuration `json:"timeout"`
	RefreshInterval jsonDuration `json:"refresh_interval"`
	Version         string       `json:"version"`
}

type heldKey struct {
	KeyID string `json:"key_id"`
	Role  string `json:"role"`
}

// jsonDuration prints as Go writes durations ("1h0m0s").
type jsonDuration time.Duration

func (d jsonDuration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *jsonDuration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = jsonDuration(v)
	return err
}

func queryStatus(endpoint, output string, wait time.Duration, refresh bool, stdout io.Writer) error {
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	client := statuspb.NewStatusClient(conn)
	var resp *statuspb.GetResponse
	var runErr error // the KEK command's, from a refresh
	if refresh {
		resp, err = client.Refresh(ctx, &statuspb.RefreshRequest{})
		if status.Code(err) == codes.FailedPrecondition {
			runErr = errors.New(status.Convert(err).Message())
			resp, err = client.Get(ctx, &statuspb.GetRequest{})
		}
	} else {
		resp, err = client.Get(ctx, &statuspb.GetRequest{})
	}
	if err != nil {
		return fmt.Errorf("cannot get the status of the daemon at %s: %v", endpoint, status.Convert(err).Message())
	}
	ns := nodeStatus{
		Endpoint:        endpoint,
		Serving:         len(resp.Keys) > 0,
		Keys:            []heldKey{},
		LastSuccess:     time.Unix(resp.LastSuccessUnix, 0).UTC(),
		FailedRuns:      resp.FailedRuns,
		LastError:       resp.LastError,
		Timeout:         jsonDuration(time.Duration(resp.TimeoutSeconds) * time.Second),
		RefreshInterval: jsonDuration(time.Duration(resp.RefreshIntervalSeconds) * time.Second),
		Version:         resp.Version,
	}
	for _, k := range resp.Keys {
		ns.Keys = append(ns.Keys, heldKey{KeyID: k.KeyId, Role: k.Role})
	}
	if ns.Serving {
		ns.Primary = ns.Keys[0].KeyID
	}
	if output == "json" {
		b, err := json.MarshalIndent(ns, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		printStatus(stdout, ns)
	}
	switch {
	case runErr != nil:
		return runErr
	case !ns.Serving:
		return fmt.Errorf("%s is not serving: its keys were purged", endpoint)
	}
	return nil
}

func printStatus(w io.Writer, ns nodeStatus) {
	state := "serving"
	if !ns.Serving {
		state = "NOT SERVING: keys purged (the KEK command has failed for longer than --timeout); calls fail"
	}
	fmt.Fprintf(w, "%s: %s (kms %s)\n", ns.Endpoint, state, ns.Version)
	for _, k := range ns.Keys {
		fmt.Fprintf(w, "  %s  %s\n", k.KeyID, k.Role)
	}
	ago := time.Since(ns.LastSuccess).Round(time.Second)
	fmt.Fprintf(w, "last successful run %s (%v ago); %d failed runs since\n", ns.LastSuccess.Format(time.RFC3339), ago, ns.FailedRuns)
	if ns.LastError != "" {
		fmt.Fprintf(w, "last error: %s\n", ns.LastError)
	}
	fmt.Fprintf(w, "refresh every %v; purge after %v without success\n", time.Duration(ns.RefreshInterval), time.Duration(ns.Timeout))
}
