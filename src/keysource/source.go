// Package keysource runs the KEK command, caches what it prints, refreshes
// it in the background and purges it when refreshing keeps failing; and it
// encrypts and decrypts with the keys it holds.
//
// Lifecycle (docs/kek.md): the command runs once at Start
// and Start fails if it does. A loaded keyring is good for Timeout. Every
// RefreshInterval the command is re-run in the background, one run at a
// time, with exponential backoff and jitter between failed tries. Requests
// never wait on a run: they read the current keys under a read lock that a
// refresh only takes for a pointer swap. If Timeout passes without a
// successful run, the keys are dropped (purged) and requests fail with
// ErrPurged until a run succeeds again. Keys that are dropped are wiped
// once no request uses them.
package keysource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cmdkms/kms/src/codec"
	"github.com/cmdkms/kms/src/kek"
)

const (
	// maxRetired bounds the keys kept in memory after the command stopped
	// listing them, so a command that prints a new key every time cannot
	// grow the daemon without limit. The oldest are dropped first.
	maxRetired = 32
	// MaxTimeout is the longest Timeout accepted: a year. Longer ones are
	// a way to say "never purge", and a year says it.
	MaxTimeout = 365 * 24 * time.Hour
	// RefreshDivisor gives the default refresh interval, Timeout/5, as the
	// 2018 daemon had it: a changed keyring reaches every daemon within a
	// fifth of the timeout, and a key server may be down for four fifths
	// of it before anything is purged.
	RefreshDivisor = 5
)

// Config says how to get the KEK.
type Config struct {
	// Command prints the KEK on stdout; see Argv for how it runs.
	Command string
	// Shell is DefaultShell unless a test needs it elsewhere.
	Shell string
	// Timeout is how long keys stay usable without a successful run.
	Timeout time.Duration
	// RefreshInterval is how often the command runs while it succeeds;
	// zero means Timeout/RefreshDivisor.
	RefreshInterval time.Duration
	// CommandTimeout bounds one run; its process group is then killed.
	CommandTimeout time.Duration
	// Mode is the codec new ciphertexts are made with.
	Mode codec.Mode
	Log  *slog.Logger
	// Hooks, if set, hears of every run and every change of the keys
	// (metrics, health). It is called from the refresh loop: it must not block.
	Hooks Hooks
}

// Hooks is told what happens to the keys.
type Hooks interface {
	// CommandRan reports one run of the command and when it ended.
	CommandRan(o Outcome, took time.Duration, end time.Time)
	// KeysChanged reports the keys now served, primary first; nil means
	// purged.
	KeysChanged(keys []KeyInfo)
}

// KeyInfo names a key the daemon holds and what it is for.
type KeyInfo struct {
	// ID is the key_id.
	ID   string
	Role Role
}

// Role is what a held key is for.
type Role string

const (
	// RolePrimary encrypts new data.
	RolePrimary Role = "primary"
	// RoleListed decrypts: the command prints it after the primary.
	RoleListed Role = "listed"
	// RoleUnlisted decrypts: the command no longer prints it, and it is
	// kept until a restart or purge.
	RoleUnlisted Role = "unlisted"
)

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
func (noHooks) KeysChanged([]KeyInfo)                        {}

// Source holds the current keys. Its methods are safe for concurrent use.
type Source struct {
	cfg  Config
	argv []string
	keys atomic.Pointer[keyring]
	runs runLog
	// users is held for reading by every use of the keys; taking it for
	// writing waits until no request uses keys that are about to be wiped.
	users   sync.RWMutex
	trigger chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
	closing sync.Once
}

// runLog is what Status and RefreshAndWait know of the runs of the
// command.
type runLog struct {
	mu             sync.Mutex
	started, ended int64
	// endedCh is closed, and replaced, when a run ends.
	endedCh     chan struct{}
	lastSuccess time.Time
	failures    int   // consecutive failed runs
	lastErr     error // of the last run, if it failed
}

func (l *runLog) start() {
	l.mu.Lock()
	l.started++
	l.mu.Unlock()
}

// failed is the number of consecutive failed runs.
func (l *runLog) failed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failures
}

// end records a run's outcome and returns the consecutive failures.
func (l *runLog) end(err error) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ended++
	l.lastErr = err
	if err == nil {
		l.lastSuccess, l.failures = time.Now(), 0
	} else {
		l.failures++
	}
	if l.endedCh != nil {
		close(l.endedCh)
	}
	l.endedCh = make(chan struct{})
	return l.failures
}

// keyring is the keys as served: the first listed of them the command
// printed (primary first), the rest kept after it stopped printing them.
type keyring struct {
	set    *codec.Set
	listed int
}

// info describes the keys, primary first; nil for nil (purged).
func (r *keyring) info() []KeyInfo {
	if r == nil {
		return nil
	}
	infos := make([]KeyInfo, len(r.set.Keys()))
	for i, k := range r.set.Keys() {
		infos[i] = KeyInfo{ID: k.KeyID, Role: RoleListed}
		switch {
		case i == 0:
			infos[i].Role = RolePrimary
		case i >= r.listed:
			infos[i].Role = RoleUnlisted
		}
	}
	return infos
}

// New checks cfg and returns a Source that has no keys yet: Refresh may be
// called at once (it is remembered), Start loads the keys.
func New(cfg Config) (*Source, error) {
	if cfg.Shell == "" {
		cfg.Shell = DefaultShell
	}
	if cfg.Hooks == nil {
		cfg.Hooks = noHooks{}
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = cfg.Timeout / RefreshDivisor
	}
	switch {
	case cfg.Timeout <= 0 || cfg.Timeout > MaxTimeout:
		return nil, fmt.Errorf("keysource: Timeout %v is not in (0, %v]", cfg.Timeout, MaxTimeout)
	case cfg.CommandTimeout <= 0 || cfg.RefreshInterval <= 0 || cfg.RefreshInterval >= cfg.Timeout:
		return nil, errors.New("keysource: CommandTimeout and RefreshInterval must be positive, RefreshInterval below Timeout")
	}
	argv, err := Argv(cfg.Shell, cfg.Command)
	if err != nil {
		return nil, err
	}
	if argv[0] != cfg.Shell {
		cfg.Log.Info("no shell; running the KEK command directly", "shell", cfg.Shell, "argv0", argv[0])
	}
	return &Source{cfg: cfg, argv: argv, trigger: make(chan struct{}, 1), done: make(chan struct{})}, nil
}

// Start runs the command once and returns an error if that fails, or if
// ctx ends first (the command's process group is then killed). On success
// it keeps the keys fresh in the background until Close.
func (s *Source) Start(ctx context.Context) error {
	loopCtx, stop := context.WithCancel(context.Background())
	s.stop = stop
	first, cancel := context.WithCancel(loopCtx)
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
			cancel()
		case <-first.Done():
		}
	}()
	keys, err := s.fetch(first)
	s.runs.end(err)
	if err != nil {
		stop()
		close(s.done)
		if ctx.Err() != nil {
			return fmt.Errorf("stopped while the KEK command ran for the first time: %w", ctx.Err())
		}
		return err
	}
	s.publish(&keyring{codec.NewSet(keys), len(keys)}, nil)
	s.cfg.Log.Info("KEK loaded", "primary_key_id", keys[0].KeyID, "keys", len(keys),
		"valid_for", s.cfg.Timeout, "refresh_every", s.cfg.RefreshInterval)
	go s.loop(loopCtx)
	return nil
}

// ErrPurged is what requests get while no keys are loaded.
var ErrPurged = errors.New("no KEK loaded: the KEK command has kept failing and the keys were purged")

// Encrypt seals plaintext with the primary key and Config.Mode, and names
// the key it used.
func (s *Source) Encrypt(plaintext []byte) (ciphertext []byte, keyID string, err error) {
	s.users.RLock()
	defer s.users.RUnlock()
	r := s.keys.Load()
	if r == nil {
		return nil, "", ErrPurged
	}
	ciphertext, err = r.set.Encrypt(s.cfg.Mode, plaintext)
	return ciphertext, r.set.Primary().KeyID, err
}

// Mode is the codec Encrypt uses (Config.Mode).
func (s *Source) Mode() codec.Mode { return s.cfg.Mode }

// Decrypt opens a ciphertext of any format (codec.Set.Decrypt) and names
// the key that opened it.
func (s *Source) Decrypt(ciphertext []byte) (plaintext []byte, keyID string, err error) {
	s.users.RLock()
	defer s.users.RUnlock()
	r := s.keys.Load()
	if r == nil {
		return nil, "", ErrPurged
	}
	plaintext, k, err := r.set.Decrypt(ciphertext)
	if err != nil {
		return nil, "", err
	}
	return plaintext, k.KeyID, nil
}

// Primary names the key that encrypts. Key ids are not secret and stay
// readable after a key is wiped, so this and Holds take no lock.
func (s *Source) Primary() (keyID string, err error) {
	r := s.keys.Load()
	if r == nil {
		return "", ErrPurged
	}
	return r.set.Primary().KeyID, nil
}

// Holds says whether keyID names a key the daemon holds.
func (s *Source) Holds(keyID string) (bool, error) {
	r := s.keys.Load()
	if r == nil {
		return false, ErrPurged
	}
	for _, k := range r.set.Keys() {
		if k.KeyID == keyID {
			return true, nil
		}
	}
	return false, nil
}

// Status is what the daemon can say about its keys and its command.
type Status struct {
	// Keys are the keys held, primary first; nil while purged.
	Keys []KeyInfo
	// LastSuccess is when the command last succeeded.
	LastSuccess time.Time
	// Failures counts the failed runs since, and LastError is the error of
	// the last of them.
	Failures        int
	LastError       error
	Timeout         time.Duration
	RefreshInterval time.Duration
}

// Status reports the keys and the runs of the command.
func (s *Source) Status() Status {
	s.runs.mu.Lock()
	defer s.runs.mu.Unlock()
	return Status{
		Keys:            s.keys.Load().info(),
		LastSuccess:     s.runs.lastSuccess,
		Failures:        s.runs.failures,
		LastError:       s.runs.lastErr,
		Timeout:         s.cfg.Timeout,
		RefreshInterval: s.cfg.RefreshInterval,
	}
}

// RefreshAndWait asks for a run, as Refresh does, and waits until a run
// that started after the request has ended; it returns that run's error.
func (s *Source) RefreshAndWait(ctx context.Context) error {
	s.runs.mu.Lock()
	target := s.runs.started + 1
	s.runs.mu.Unlock()
	s.Refresh()
	for {
		s.runs.mu.Lock()
		ended, err, ch := s.runs.ended, s.runs.lastErr, s.runs.endedCh
		s.runs.mu.Unlock()
		if ended >= target {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return errors.New("the daemon is stopping")
		}
	}
}

// Refresh asks for a run now (e.g. on SIGHUP) without waiting for it.
// Requests made while a run is under way cause one more run after it, so
// that a keyring changed during a run is always read; any number of them
// cause just one.
func (s *Source) Refresh() {
	select {
	case s.trigger <- struct{}{}:
	default:
	}
}

// Close stops refreshing, kills a running command, and drops and wipes
// the keys. Calling it again does nothing.
func (s *Source) Close() {
	s.closing.Do(func() {
		if s.stop != nil {
			s.stop()
			<-s.done
		}
		s.purge()
	})
}

// publish makes r the keys requests get, then wipes drop (keys that r
// no longer holds) once no request holds them, and returns the memory that
// held them to the operating system.
func (s *Source) publish(r *keyring, drop []*codec.Key) {
	s.keys.Store(r)
	s.cfg.Hooks.KeysChanged(r.info())
	if len(drop) == 0 {
		return
	}
	// An empty critical section: waiting for the readers is the point.
	s.users.Lock()
	s.users.Unlock()
	for _, k := range drop {
		k.Wipe()
	}
	debug.FreeOSMemory()
}

// purge drops and wipes every key.
func (s *Source) purge() {
	var drop []*codec.Key
	if old := s.keys.Load(); old != nil {
		drop = old.set.Keys()
	}
	s.publish(nil, drop)
}

// install makes fresh the current keys. A key that is already loaded keeps
// its cipher and fresh's copy is wiped at once, so that each key exists in
// memory once. Keys that the command no longer lists stay for decrypt
// (after the listed ones, so never primary), because data written under
// them may still exist; they are forgotten on restart and on purge. It
// returns the set it replaced (nil if purged).
func (s *Source) install(fresh []*codec.Key) (old *keyring) {
	old = s.keys.Load()
	if old == nil {
		s.publish(&keyring{codec.NewSet(fresh), len(fresh)}, nil)
		return nil
	}
	keys := make([]*codec.Key, 0, len(fresh)+len(old.set.Keys()))
	for _, k := range fresh {
		if have := old.set.Lookup(k.ID); have != nil {
			k.Wipe() // never published
			k = have
		}
		keys = append(keys, k)
	}
	var drop []*codec.Key
	retired := 0
	for _, k := range old.set.Keys() {
		switch {
		case hasKey(fresh, k.ID):
		case retired < maxRetired:
			keys = append(keys, k)
			retired++
		default:
			drop = append(drop, k)
		}
	}
	s.publish(&keyring{codec.NewSet(keys), len(fresh)}, drop)
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

func sameKeys(a, b *keyring) bool {
	return slices.Equal(a.info(), b.info())
}

// fetch runs the command and sets up a cipher for each key it printed,
// primary first, reporting the run to the hooks. Its caller records the
// end of the run (runs.end) once the outcome is acted on.
func (s *Source) fetch(ctx context.Context) ([]*codec.Key, error) {
	s.runs.start()
	start := time.Now()
	f, err := Fetch(ctx, s.argv, s.cfg.CommandTimeout)
	end := time.Now()
	s.cfg.Hooks.CommandRan(outcome(err), end.Sub(start), end)
	if err != nil {
		return nil, err
	}
	if f.Stderr != "" {
		s.cfg.Log.Debug("KEK command wrote to stderr", "stderr", f.Stderr)
	}
	return f.Keys, nil
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
	run := func() {
		results = make(chan result, 1)
		go func() {
			keys, err := s.fetch(ctx)
			results <- result{keys, err}
		}()
	}
	purged := false
	again := false // a refresh was asked for while a run was in flight
	for {
		select {
		case <-ctx.Done():
			if results != nil {
				r := <-results
				for _, k := range r.keys {
					k.Wipe()
				}
			}
			return
		case <-s.trigger:
			if results == nil {
				run()
			} else if !again {
				again = true
				log.Info("refresh asked for while the KEK command runs: it runs again when this run ends")
			}
		case <-next.C:
			if results == nil {
				run()
			}
		case <-expiry.C:
			if !purged {
				purged = true
				s.purge()
				log.Error("KEK purged: the command has not succeeded within the timeout; "+
					"requests fail until it works again", "timeout", s.cfg.Timeout, "failed_runs", s.runs.failed())
			}
		case r := <-results:
			results = nil
			if r.err == nil {
				// Installed before the run counts as ended, so that whoever
				// waits for it sees its keys.
				old := s.install(r.keys)
				s.logChange(old, purged, s.runs.failed())
			}
			failures := s.runs.end(r.err)
			if r.err != nil {
				delay := s.backoff(failures)
				if failures == 1 && !purged {
					log.Warn("KEK refresh failed; serving the cached KEK and retrying", "err", r.err, "retry_in", delay)
				} else {
					log.Debug("KEK refresh failed again", "err", r.err, "failures", failures, "retry_in", delay)
				}
				next.Reset(delay)
			} else {
				purged = false
				expiry.Reset(s.cfg.Timeout)
				next.Reset(s.refreshDelay())
			}
			if again {
				again = false
				run()
			}
		}
	}
}

// logChange reports a successful run once, at the level its news deserves.
func (s *Source) logChange(old *keyring, wasPurged bool, failures int) {
	log := s.cfg.Log
	cur := s.keys.Load()
	primary, n := cur.set.Primary().KeyID, len(cur.set.Keys())
	switch {
	case wasPurged:
		log.Info("KEK restored; serving again", "primary_key_id", primary, "keys", n, "failed_runs", failures)
		return
	case old.set.Primary().KeyID != primary:
		log.Info("primary KEK changed; new data is encrypted with the new key",
			"primary_key_id", primary, "previous_primary_key_id", old.set.Primary().KeyID, "keys", n)
	case !sameKeys(old, cur):
		log.Info("keyring changed", "primary_key_id", primary, "keys", n, "listed", cur.listed)
	case failures > 0:
		log.Info("KEK refresh recovered", "failed_runs", failures)
	default:
		log.Debug("KEK refreshed", "primary_key_id", primary)
	}
}

// refreshDelay is when to run the command after a success: every
// RefreshInterval, a little earlier at random so that daemons started
// together do not all call the key server at once.
func (s *Source) refreshDelay() time.Duration {
	t := s.cfg.RefreshInterval
	return t - rand.N(t/20+1)
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
