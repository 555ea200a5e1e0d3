// Package keysource runs the KEK command, caches what it prints, refreshes
// it in the background and purges it when refreshing keeps failing; and it
// encrypts and decrypts with the keys it holds.
//
// Lifecycle (docs/kek.md): the command runs once at Start
// and Start fails if it does. A loaded keyring is good for Timeout. Every
// RefreshInterval the command is re-run in the background, one run at a
// time, with exponential backoff and jitter between failed tries. Requests
// never wait on a run: they load the current keys with one atomic read and
// hold a read lock while they use them. Replacing the keys takes no lock;
// only dropping keys does (purge, a retired key beyond the bound, Close):
// it takes the write lock, empty, to wait until no request uses the keys
// it then wipes, and while it waits new requests wait too (that is how
// sync.RWMutex keeps a writer from starving), for the requests in flight,
// never for a run. If Timeout passes without a successful run, the keys
// are dropped (purged) and requests fail with ErrPurged until a run
// succeeds again.
package keysource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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
	// Log is where the source reports; nil discards.
	Log *slog.Logger
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

// A run cancelled because the source is closing (ErrCancelled) has no
// Outcome: it is not reported to Hooks nor counted as a failure, since it
// says nothing about the command.

// Outcomes lists every Outcome, for metrics that export all of them.
var Outcomes = []Outcome{OutcomeSuccess, OutcomeFailed, OutcomeTimeout, OutcomeInvalidOutput}

type noHooks struct{}

func (noHooks) CommandRan(Outcome, time.Duration, time.Time) {}
func (noHooks) KeysChanged([]KeyInfo)                        {}

// Source holds the current keys. Its methods are safe for concurrent use;
// Start and Close may be called in any order.
type Source struct {
	cfg  Config
	argv []string
	keys atomic.Pointer[keyring]
	runs runLog
	// users is held for reading by every use of the keys; taking it for
	// writing waits until no request uses keys that are about to be wiped.
	users   sync.RWMutex
	trigger chan struct{}

	// life orders Start and Close: whichever comes second sees what the
	// first did.
	life    sync.Mutex
	closed  bool
	stop    context.CancelFunc // set by Start: ends its run and the loop
	closing chan struct{}      // closed when Close begins
	done    chan struct{}      // closed when Start failed or the loop ended
	closer  sync.Once
}

// ErrStopping is what a call gets that needs runs of the command while, or
// after, the source is closed: the daemon is stopping.
var ErrStopping = errors.New("the daemon is stopping")

// runLog is what Status and RefreshAndWait know of the runs of the
// command. Runs are numbered from 1 in the order they start.
type runLog struct {
	mu      sync.Mutex
	started int64
	// waiters wait for the run numbered by their key.
	waiters     map[int64][]chan error
	lastSuccess time.Time
	failures    int   // consecutive failed runs
	lastErr     error // of the last run, if it failed
}

// start numbers a new run.
func (l *runLog) start() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started++
	return l.started
}

// await returns the number of the next run to start and a channel that
// will get its result.
func (l *runLog) await() (int64, chan error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	id, ch := l.started+1, make(chan error, 1)
	if l.waiters == nil {
		l.waiters = map[int64][]chan error{}
	}
	l.waiters[id] = append(l.waiters[id], ch)
	return id, ch
}

// forget drops a waiter that stopped waiting.
func (l *runLog) forget(id int64, ch chan error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.waiters[id] = slices.DeleteFunc(l.waiters[id], func(c chan error) bool { return c == ch })
	if len(l.waiters[id]) == 0 {
		delete(l.waiters, id)
	}
}

// failed is the number of consecutive failed runs.
func (l *runLog) failed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failures
}

// end records the outcome of run id, tells its waiters, and returns the
// consecutive failures.
func (l *runLog) end(id int64, err error) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastErr = err
	if err == nil {
		l.lastSuccess, l.failures = time.Now(), 0
	} else {
		l.failures++
	}
	for _, ch := range l.waiters[id] {
		ch <- err
	}
	delete(l.waiters, id)
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

// Validate checks the times of a configuration, RefreshInterval's zero
// standing for its default. It is the one check of them, made by New and
// by the daemon's flags; its messages name the flags, which set these
// fields one to one.
func (c Config) Validate() error {
	refresh := c.RefreshInterval
	if refresh == 0 {
		refresh = c.Timeout / RefreshDivisor
	}
	switch {
	case c.Timeout <= 0:
		return fmt.Errorf("--timeout %v must be positive", c.Timeout)
	case c.Timeout > MaxTimeout:
		return fmt.Errorf("--timeout %v is above the maximum of %v (a year; to never purge, use that)", c.Timeout, MaxTimeout)
	case refresh <= 0 || refresh >= c.Timeout:
		return fmt.Errorf("--refresh-interval %v must be positive and below --timeout %v", refresh, c.Timeout)
	case c.CommandTimeout <= 0 || c.CommandTimeout >= c.Timeout:
		return fmt.Errorf("--command-timeout %v must be positive and below --timeout %v", c.CommandTimeout, c.Timeout)
	case refresh+c.CommandTimeout >= c.Timeout:
		// A run starts a refresh interval after the last success, and the
		// keys are purged a timeout after it: a run that takes its time
		// must still end before that.
		return fmt.Errorf("--refresh-interval %v plus --command-timeout %v reach --timeout %v: a slow run would end after the keys were purged",
			refresh, c.CommandTimeout, c.Timeout)
	}
	return nil
}

// New checks cfg and returns a Source that has no keys yet; Start loads
// them. Refresh may be called at once: a request made before Start is
// answered by Start's run, one made during it causes one more run.
func New(cfg Config) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("keysource: %w", err)
	}
	if cfg.Shell == "" {
		cfg.Shell = DefaultShell
	}
	if cfg.Hooks == nil {
		cfg.Hooks = noHooks{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = cfg.Timeout / RefreshDivisor
	}
	argv, err := Argv(cfg.Shell, cfg.Command)
	if err != nil {
		return nil, err
	}
	if argv[0] != cfg.Shell {
		cfg.Log.Info("no shell; running the KEK command directly", "shell", cfg.Shell, "argv0", argv[0])
	}
	return &Source{cfg: cfg, argv: argv, trigger: make(chan struct{}, 1),
		closing: make(chan struct{}), done: make(chan struct{})}, nil
}

// Start runs the command once and returns an error if that fails, or if
// ctx ends or Close is called first (the command's process group is then
// killed). On success it keeps the keys fresh in the background until
// Close. After Close it fails with ErrStopping.
func (s *Source) Start(ctx context.Context) error {
	s.life.Lock()
	switch {
	case s.closed:
		s.life.Unlock()
		return fmt.Errorf("keysource: Start after Close: %w", ErrStopping)
	case s.stop != nil:
		s.life.Unlock()
		return errors.New("keysource: Start called twice")
	}
	loopCtx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.life.Unlock()

	first, cancel := context.WithCancel(loopCtx)
	defer cancel()
	defer context.AfterFunc(ctx, cancel)()
	id := s.begin()
	keys, err := s.fetch(first, id)
	if err == nil && loopCtx.Err() != nil {
		// Close came as the run ended: its keys are not served.
		wipe(keys)
		err = ErrCancelled
	}
	if err != nil {
		stop()
		close(s.done)
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("stopped while the KEK command ran for the first time: %w", ctx.Err())
		case errors.Is(err, ErrCancelled):
			return fmt.Errorf("keysource: closed while the KEK command ran for the first time: %w", ErrStopping)
		}
		s.runs.end(id, err)
		return err
	}
	s.publish(&keyring{codec.NewSet(keys), len(keys)}, nil)
	s.runs.end(id, nil) // after publishing, so that whoever waits for it sees its keys
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

// RefreshAndWait asks for a run, as Refresh does, waits until the first
// run that starts after the request has ended, and returns that run's
// error. It returns ErrStopping once Close has begun.
func (s *Source) RefreshAndWait(ctx context.Context) error {
	id, result := s.runs.await()
	defer s.runs.forget(id, result)
	s.Refresh()
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return ErrStopping
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
// the keys. It may come before, during or after Start; calling it again
// does nothing.
func (s *Source) Close() {
	s.closer.Do(func() {
		s.life.Lock()
		s.closed = true
		stop := s.stop
		s.life.Unlock()
		close(s.closing)
		if stop != nil {
			stop()
			<-s.done
		}
		s.purge()
	})
}

// publish makes r the keys requests get, then wipes drop (keys that r no
// longer holds) once no request holds them. Wiping is what keeps dropped
// keys from lingering in memory; the garbage collector frees that memory,
// already zeroed, in its own time.
func (s *Source) publish(r *keyring, drop []*codec.Key) {
	s.keys.Store(r)
	s.cfg.Hooks.KeysChanged(r.info())
	if len(drop) == 0 {
		return
	}
	// An empty critical section: waiting for the readers is the point.
	s.users.Lock()
	s.users.Unlock()
	wipe(drop)
}

func wipe(keys []*codec.Key) {
	for _, k := range keys {
		k.Wipe()
	}
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

// begin numbers a new run. Every request for a run made until now is
// answered by it, so a pending one is taken: it would otherwise cause one
// more run after this one. It is taken before the run is numbered, so that
// a RefreshAndWait whose request is taken waits for this run.
func (s *Source) begin() int64 {
	s.takeRequest()
	return s.runs.start()
}

// takeRequest takes a pending request for a run, if there is one.
func (s *Source) takeRequest() bool {
	select {
	case <-s.trigger:
		return true
	default:
		return false
	}
}

// fetch makes run id: it runs the command and sets up a cipher for each
// key it printed, primary first, reporting the run to the hooks. Its caller
// records the end of the run (runs.end) once the outcome is acted on,
// unless it was cancelled.
func (s *Source) fetch(ctx context.Context, id int64) ([]*codec.Key, error) {
	start := time.Now()
	f, err := Fetch(ctx, s.argv, s.cfg.CommandTimeout)
	end := time.Now()
	if errors.Is(err, ErrCancelled) {
		return nil, err
	}
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
	id   int64
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
		id := s.begin()
		go func() {
			keys, err := s.fetch(ctx, id)
			results <- result{id, keys, err}
		}()
	}
	purged := false
	again := false // a refresh was asked for while a run was in flight
	for {
		select {
		case <-ctx.Done():
			if results != nil {
				wipe((<-results).keys)
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
			if errors.Is(r.err, ErrCancelled) {
				return // ctx ended with the run; not a failure of the command
			}
			results = nil
			if r.err == nil {
				// Installed before the run counts as ended, so that whoever
				// waits for it sees its keys.
				old := s.install(r.keys)
				s.logChange(old, purged, s.runs.failed())
			}
			failures := s.runs.end(r.id, r.err)
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
			// A request may have come with the result, unseen: it is
			// answered by the run it causes now, like those seen during the
			// run; left pending, it would cause another after that one.
			if s.takeRequest() || again {
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
