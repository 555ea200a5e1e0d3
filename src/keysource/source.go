// Package keysource runs the KEK command, caches what it prints, refreshes
// it in the background and purges it when refreshing keeps failing.
//
// Lifecycle (README "Running the daemon"): the command runs once at Start
// and Start fails if it does. A loaded keyring is good for Timeout. From
// about 3/4 of Timeout on, the command is re-run in the background, one run
// at a time, with exponential backoff and jitter between failed tries.
// Requests never wait on a run: they read the current keys atomically. If
// Timeout passes without a successful run, the keys are dropped (purged)
// and requests fail until a run succeeds again.
package keysource

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
)

// maxRetired bounds the keys kept in memory after the command stopped
// listing them, so a command that prints a new key every time cannot
// grow the daemon without limit. The oldest are dropped first.
const maxRetired = 32

// Config says how to get the KEK.
type Config struct {
	// Command prints the KEK on stdout; see Argv for how it runs.
	Command string
	// Shell is DefaultShell unless a test needs it elsewhere.
	Shell string
	// Timeout is how long keys stay usable without a successful run.
	Timeout time.Duration
	// CommandTimeout bounds one run; its process group is then killed.
	CommandTimeout time.Duration
	Log            *slog.Logger
	// Hooks, if set, hears of every run and every change of the keys
	// (metrics, health). It is called from the refresh loop: it must not block.
	Hooks Hooks
}

// Hooks is told what happens to the keys.
type Hooks interface {
	// CommandRan reports one run of the command and when it ended.
	CommandRan(o Outcome, took time.Duration, end time.Time)
	// KeysChanged reports the keys now served; nil means purged.
	KeysChanged(set *codec.Set)
}

// Outcome is how a run of the command ended.
type Outcome string

const (
	OutcomeSuccess Outcome = "success"
	// OutcomeFailed: it could not start or exited non-zero.
	OutcomeFailed Outcome = "failed"
	// OutcomeTimeout: it ran past CommandTimeout and was killed.
	OutcomeTimeout Outcome = "timeout"
	// OutcomeInvalidOutput: it succeeded but printed no valid KEK.
	OutcomeInvalidOutput Outcome = "invalid_output"
)

// Outcomes lists every Outcome, for metrics that export all of them.
var Outcomes = []Outcome{OutcomeSuccess, OutcomeFailed, OutcomeTimeout, OutcomeInvalidOutput}

type noHooks struct{}

func (noHooks) CommandRan(Outcome, time.Duration, time.Time) {}
func (noHooks) KeysChanged(*codec.Set)                       {}

// Source holds the current keys. Its methods are safe for concurrent use.
type Source struct {
	cfg     Config
	argv    []string
	keys    atomic.Pointer[codec.Set]
	trigger chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
}

// Start runs the command once and returns an error if that fails; on
// success it keeps the keys fresh in the background until Close.
func Start(cfg Config) (*Source, error) {
	if cfg.Shell == "" {
		cfg.Shell = DefaultShell
	}
	if cfg.Hooks == nil {
		cfg.Hooks = noHooks{}
	}
	if cfg.Timeout <= 0 || cfg.CommandTimeout <= 0 {
		return nil, errors.New("keysource: Timeout and CommandTimeout must be positive")
	}
	argv, err := Argv(cfg.Shell, cfg.Command)
	if err != nil {
		return nil, err
	}
	if argv[0] != cfg.Shell {
		cfg.Log.Info("no shell; running the KEK command directly", "shell", cfg.Shell, "argv0", argv[0])
	}
	s := &Source{cfg: cfg, argv: argv, trigger: make(chan struct{}, 1), done: make(chan struct{})}
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	keys, err := s.fetch(ctx)
	if err != nil {
		stop()
		return nil, err
	}
	set := codec.NewSet(keys)
	s.setKeys(set)
	cfg.Log.Info("KEK loaded", "primary_key_id", set.Primary().KeyID, "keys", len(keys), "valid_for", cfg.Timeout)
	go s.loop(ctx)
	return s, nil
}

// Keys returns the current keys, or nil while purged. It never blocks.
func (s *Source) Keys() *codec.Set { return s.keys.Load() }

// Refresh asks for a run now (e.g. on SIGHUP) without waiting for it.
// Requests that arrive while one is pending or running are merged into it.
func (s *Source) Refresh() {
	select {
	case s.trigger <- struct{}{}:
	default:
	}
}

// Close stops refreshing, kills a running command and drops the keys.
// Calling it again does nothing.
func (s *Source) Close() {
	s.stop()
	<-s.done
	s.setKeys(nil)
}

func (s *Source) setKeys(set *codec.Set) {
	s.keys.Store(set)
	s.cfg.Hooks.KeysChanged(set)
}

// fetch runs the command and sets up a cipher for each key it printed,
// primary first. The raw key bytes are wiped before it returns: the
// ciphers keep their own key schedules.
func (s *Source) fetch(ctx context.Context) ([]*codec.Key, error) {
	start := time.Now()
	keys, err := s.fetchKeys(ctx)
	end := time.Now()
	o := OutcomeSuccess
	switch {
	case errors.Is(err, ErrTimeout):
		o = OutcomeTimeout
	case errors.Is(err, ErrTooMuchOutput), errors.As(err, new(*outputError)):
		o = OutcomeInvalidOutput
	case err != nil:
		o = OutcomeFailed
	}
	s.cfg.Hooks.CommandRan(o, end.Sub(start), end)
	return keys, err
}

// outputError marks a run that succeeded but printed no usable KEK.
type outputError struct{ error }

func (e *outputError) Unwrap() error { return e.error }

func (s *Source) fetchKeys(ctx context.Context) ([]*codec.Key, error) {
	out, stderr, err := Run(ctx, s.argv, s.cfg.CommandTimeout)
	if err != nil {
		return nil, err
	}
	if stderr != "" {
		s.cfg.Log.Debug("KEK command wrote to stderr", "stderr", stderr)
	}
	ring, err := kek.Parse(out)
	clear(out)
	if err != nil {
		return nil, &outputError{err}
	}
	defer ring.Wipe()
	keys := make([]*codec.Key, 0, len(ring.Keys))
	for _, k := range ring.Keys {
		ck, err := codec.NewKey(k)
		if err != nil {
			return nil, &outputError{err}
		}
		keys = append(keys, ck)
	}
	return keys, nil
}

// install makes fresh the current keys. Keys that the command no longer
// lists stay for decrypt (after the listed ones, so never primary), because
// data written under them may still exist; they are forgotten on restart
// and on purge. It returns the set it replaced (nil if purged).
func (s *Source) install(fresh []*codec.Key) (old *codec.Set) {
	old = s.keys.Load()
	keys := fresh
	if old != nil {
		retired := 0
		for _, k := range old.Keys() {
			if !hasKey(fresh, k.ID) && retired < maxRetired {
				keys = append(keys, k)
				retired++
			}
		}
	}
	s.setKeys(codec.NewSet(keys))
	return old
}

func hasKey(keys []*codec.Key, id kek.ID) bool {
	for _, k := range keys {
		if k.ID == id {
			return true
		}
	}
	return false
}

func sameKeys(a, b *codec.Set) bool {
	if len(a.Keys()) != len(b.Keys()) {
		return false
	}
	for i, k := range a.Keys() {
		if b.Keys()[i].ID != k.ID {
			return false
		}
	}
	return true
}

type result struct {
	keys []*codec.Key
	err  error
}

// loop owns all timing and all changes to the keys after Start. A run
// happens in its own goroutine so that expiry is on time even while a hung
// command waits to be killed.
func (s *Source) loop(ctx context.Context) {
	defer close(s.done)
	log := s.cfg.Log
	expiry := time.NewTimer(s.cfg.Timeout)
	next := time.NewTimer(s.refreshDelay())
	defer expiry.Stop()
	defer next.Stop()

	var results chan result // non-nil while a run is in flight
	failures := 0
	purged := false
	for {
		startRun := false
		select {
		case <-ctx.Done():
			if results != nil {
				<-results
			}
			return
		case <-s.trigger:
			startRun = true
		case <-next.C:
			startRun = true
		case <-expiry.C:
			if !purged {
				purged = true
				s.setKeys(nil)
				log.Error("KEK purged: the command has not succeeded within the timeout; "+
					"requests fail until it works again", "timeout", s.cfg.Timeout, "failed_runs", failures)
			}
		case r := <-results:
			results = nil
			if r.err != nil {
				failures++
				delay := s.backoff(failures)
				if failures == 1 && !purged {
					log.Warn("KEK refresh failed; serving the cached KEK and retrying", "err", r.err, "retry_in", delay)
				} else {
					log.Debug("KEK refresh failed again", "err", r.err, "failures", failures, "retry_in", delay)
				}
				next.Reset(delay)
				continue
			}
			old := s.install(r.keys)
			s.logChange(old, purged, failures)
			purged, failures = false, 0
			expiry.Reset(s.cfg.Timeout)
			next.Reset(s.refreshDelay())
		}
		if startRun && results == nil {
			results = make(chan result, 1)
			go func() {
				keys, err := s.fetch(ctx)
				results <- result{keys, err}
			}()
		}
	}
}

// logChange reports a successful run once, at the level its news deserves.
func (s *Source) logChange(old *codec.Set, wasPurged bool, failures int) {
	log := s.cfg.Log
	set := s.keys.Load()
	primary := set.Primary().KeyID
	switch {
	case wasPurged:
		log.Info("KEK restored; serving again", "primary_key_id", primary, "keys", len(set.Keys()), "failed_runs", failures)
		return
	case old.Primary().KeyID != primary:
		log.Info("primary KEK changed; new data is encrypted with the new key",
			"primary_key_id", primary, "previous_primary_key_id", old.Primary().KeyID, "keys", len(set.Keys()))
	case !sameKeys(old, set):
		log.Info("keyring changed", "primary_key_id", primary, "keys", len(set.Keys()))
	case failures > 0:
		log.Info("KEK refresh recovered", "failed_runs", failures)
	default:
		log.Debug("KEK refreshed", "primary_key_id", primary)
	}
}

// refreshDelay is when to refresh a keyring just loaded: at 3/4 of its
// lifetime, a little earlier at random so that daemons started together
// do not all call the key server at once.
func (s *Source) refreshDelay() time.Duration {
	t := s.cfg.Timeout
	return t*3/4 - rand.N(t/20+1)
}

// backoff is the wait after the n-th consecutive failure: exponential from
// base, capped so a recovered command is noticed soon (also after a purge),
// with half of it random.
func (s *Source) backoff(n int) time.Duration {
	t := s.cfg.Timeout
	base, limit := min(time.Second, t/60), min(30*time.Second, t/8)
	d := limit
	if n < 30 && base<<(n-1) < limit {
		d = base << (n - 1)
	}
	return d/2 + rand.N(d/2+1)
}
