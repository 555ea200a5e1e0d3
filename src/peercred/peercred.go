// Package peercred learns who is calling on the KMS socket: the kernel's
// record of the connecting process (SO_PEERCRED), read once per connection
// as it is accepted, before any gRPC frame. A Listener closes connections
// from callers outside a Policy; the others carry their credentials to the
// handlers through gRPC's AuthInfo (see Credentials and FromContext), so a
// call costs no system call to know its caller.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Creds are a caller's process id, user id and group id, as the kernel
// recorded them when it connected. The group is the effective one:
// supplementary groups are not part of SO_PEERCRED.
type Creds struct {
	PID      int32
	UID, GID uint32
}

// Policy says which callers are served: those whose uid is in UIDs or
// whose gid is in GIDs; with both empty, everyone who can open the socket.
type Policy struct {
	UIDs, GIDs []uint32
}

// Restricts says whether the policy refuses anyone.
func (p Policy) Restricts() bool { return len(p.UIDs) > 0 || len(p.GIDs) > 0 }

// Allows says whether a caller with c is served.
func (p Policy) Allows(c Creds) bool {
	return !p.Restricts() || slices.Contains(p.UIDs, c.UID) || slices.Contains(p.GIDs, c.GID)
}

// ParseIDs reads a comma-separated list of numeric user or group ids, as
// --allow-uid and --allow-gid take them; "" is the empty list. Names are
// not taken: resolving them would depend on the image's /etc/passwd,
// which a static pod's may lack.
func ParseIDs(s string) ([]uint32, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var ids []uint32
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		id, err := strconv.ParseUint(f, 10, 32)
		if err != nil || id == unknownUID {
			return nil, fmt.Errorf("%q is not a numeric id", f)
		}
		ids = append(ids, uint32(id))
	}
	return ids, nil
}

// Reasons a connection is refused, the values of
// kms_connections_refused_total's reason label.
const (
	// ReasonNotAllowed: the caller's uid and gid are outside the policy.
	ReasonNotAllowed = "not_allowed"
	// ReasonNoCredentials: the kernel gave no credentials for the caller
	// (not a unix socket connection, or it failed already). Served, the
	// call could be neither checked nor audited.
	ReasonNoCredentials = "no_credentials"
)

// Listener accepts the connections of callers its policy allows and
// closes the others at once. Its connections are *Conn.
type Listener struct {
	net.Listener
	policy  Policy
	log     *slog.Logger
	refused *prometheus.CounterVec
	quiet   quiet
}

// Listen wraps l, whose connections must be unix socket connections (or
// wrap one, see Conn.NetConn). The refusal counter is in Collector.
func Listen(l net.Listener, p Policy, log *slog.Logger) *Listener {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kms_connections_refused_total",
		Help: "Connections to the KMS socket closed at once, by reason: not_allowed (uid and gid outside --allow-uid and --allow-gid), no_credentials (the kernel gave none).",
	}, []string{"reason"})
	// So that rates have a zero to start from.
	refused.WithLabelValues(ReasonNotAllowed)
	refused.WithLabelValues(ReasonNoCredentials)
	return &Listener{Listener: l, policy: p, log: log, refused: refused, quiet: quiet{seen: map[uint32]bool{}}}
}

// Collector is kms_connections_refused_total.
func (l *Listener) Collector() prometheus.Collector { return l.refused }

// Accept returns the next connection of an allowed caller.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cr, err := read(c)
		switch {
		case err != nil:
			c.Close()
			l.refused.WithLabelValues(ReasonNoCredentials).Inc()
			if n, ok := l.quiet.speak(unknownUID, time.Now()); ok {
				l.log.Warn("refused a connection: cannot read its peer's credentials", "err", err, "suppressed", n)
			}
		case !l.policy.Allows(cr):
			c.Close()
			l.refused.WithLabelValues(ReasonNotAllowed).Inc()
			if n, ok := l.quiet.speak(cr.UID, time.Now()); ok {
				l.log.Warn("refused a connection from a caller outside --allow-uid and --allow-gid",
					"uid", cr.UID, "gid", cr.GID, "pid", cr.PID, "suppressed", n)
			}
		default:
			return &Conn{Conn: c, Creds: cr}, nil
		}
	}
}

// read asks the kernel for the credentials of c's peer.
func read(c net.Conn) (Creds, error) {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Creds{}, fmt.Errorf("a %T has no file descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return Creds{}, err
	}
	var u *syscall.Ucred
	var uerr error
	if err := rc.Control(func(fd uintptr) {
		u, uerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return Creds{}, err
	}
	if uerr != nil {
		return Creds{}, fmt.Errorf("SO_PEERCRED: %w", uerr)
	}
	return Creds{PID: u.Pid, UID: u.Uid, GID: u.Gid}, nil
}

// Refusals are logged, but a refused caller that reconnects in a loop
// must not flood the log (and the disk under it), nor drown the lines
// that matter: each uid's first refusal is logged at once, so every
// distinct caller is named, and after that at most one line per
// quietPeriod, saying how many were not logged meanwhile. The metric
// counts every refusal.
const (
	quietPeriod = 10 * time.Second
	// maxNamed bounds the uids remembered; after that many, new ones wait
	// their turn like the others.
	maxNamed = 1024
)

// unknownUID is (uid_t)-1, which no process has: no list may name it,
// and the log's rate limit counts callers without credentials under it.
const unknownUID = 1<<32 - 1

type quiet struct {
	mu         sync.Mutex
	seen       map[uint32]bool
	last       time.Time
	suppressed int
}

// speak says whether to log a refusal of uid now and, if so, how many
// refusals were not logged since the last line.
func (q *quiet) speak(uid uint32, now time.Time) (suppressed int, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	first := !q.seen[uid] && len(q.seen) < maxNamed
	if !first && now.Sub(q.last) < quietPeriod {
		q.suppressed++
		return 0, false
	}
	if first {
		q.seen[uid] = true
	}
	q.last = now
	suppressed, q.suppressed = q.suppressed, 0
	return suppressed, true
}

// Conn is an accepted connection and its caller's credentials.
type Conn struct {
	net.Conn
	Creds Creds
}

// NetConn returns the connection c wraps.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// AuthInfo is what gRPC keeps of a connection's handshake (see Credentials).
type AuthInfo struct {
	credentials.CommonAuthInfo
	Creds Creds
}

func (*AuthInfo) AuthType() string { return "peercred" }

// Credentials are gRPC server credentials that pass each connection's
// caller, read by Listener, to its calls: gRPC keeps the AuthInfo of the
// handshake with the connection and puts it in every call's context.
// There is no security protocol: the socket's permissions and the
// Listener's policy decide who talks.
type Credentials struct{}

var errNoListener = errors.New("peercred: the connection was not accepted by a peercred.Listener")

func (Credentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pc, ok := c.(*Conn)
	if !ok {
		return nil, nil, errNoListener
	}
	return c, &AuthInfo{Creds: pc.Creds}, nil
}

func (Credentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: server credentials only")
}

func (Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c Credentials) Clone() credentials.TransportCredentials { return c }

func (Credentials) OverrideServerName(string) error { return nil }

// FromContext returns the credentials of a call's caller, if the server
// was made with Credentials.
func FromContext(ctx context.Context) (Creds, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Creds{}, false
	}
	a, ok := p.AuthInfo.(*AuthInfo)
	if !ok {
		return Creds{}, false
	}
	return a.Creds, true
}
