package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Clients returns a client-go clientset per API server, with no client-side
// rate limit and a 10 s timeout per call.
func (c *Cluster) Clients(t testing.TB) []kubernetes.Interface {
	t.Helper()
	var cs []kubernetes.Interface
	for _, n := range c.Nodes {
		k, err := kubernetes.NewForConfig(&rest.Config{
			Host:            n.apiURL(),
			BearerToken:     c.pki.token,
			TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM},
			QPS:             -1,
			Timeout:         10 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, k)
	}
	return cs
}

// Load writes and reads Secrets through every API server, all the time,
// and counts every call and every failure by phase and node. Writers
// create new Secrets (updates would race with the drill's kubectl replace,
// which sends the resourceVersion it read); readers read Secrets written
// through any node and compare their data. Each node can be drained (no
// new calls through it, as a load balancer takes a node out before
// planned maintenance) and undrained.
type Load struct {
	clients []kubernetes.Interface
	gates   []sync.RWMutex // held for reading by each call; drained: held for writing
	drained []bool         // whose gate Drain holds (guarded by mu)

	mu       sync.Mutex
	phase    *Phase
	phases   []*Phase
	names    []string          // Secrets readers may read: ns/name
	want     map[string]string // ns/name -> data["v"]
	stop     chan struct{}
	stopped  sync.WaitGroup
	stopOnce sync.Once
}

// Phase is a step of the drill, with what the load saw during it.
type Phase struct {
	Name    string
	Start   time.Time
	End     time.Time
	Ops     [3]int
	Fails   [3]int
	Errors  [3]map[string]int // by message, with names and numbers blanked
	Samples [3][]string       // the first few messages as seen
}

const (
	writesPerSecond = 1  // per node: each is one more object for the rewrite
	readsPerSecond  = 20 // per node
)

// StartLoad starts writers and readers on every node, in namespace ns
// (which must exist), in phase.
func StartLoad(clients []kubernetes.Interface, ns, phase string) *Load {
	l := &Load{clients: clients, gates: make([]sync.RWMutex, len(clients)), drained: make([]bool, len(clients)), want: map[string]string{}, stop: make(chan struct{})}
	l.Phase(phase)
	for i := range clients {
		l.run(time.Second/writesPerSecond, func(seq int) { l.Create(i, ns, fmt.Sprintf("load-n%d-%05d", i+1, seq)) })
		l.run(time.Second/readsPerSecond, func(int) { l.read(i) })
	}
	return l
}

// run calls op every interval until Stop.
func (l *Load) run(interval time.Duration, op func(seq int)) {
	l.stopped.Add(1)
	go func() {
		defer l.stopped.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			select {
			case <-l.stop:
				return
			case <-tick.C:
				op(seq)
			}
		}
	}()
}

// known records a Secret written, which readers may then read.
func (l *Load) known(key, v string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.names = append(l.names, key)
	l.want[key] = v
}

// Want returns every Secret written so far and its data.
func (l *Load) Want() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := make(map[string]string, len(l.want))
	for k, v := range l.want {
		w[k] = v
	}
	return w
}

// Create creates Secret ns/name through node, with random data that
// readers then expect, and counts the call.
func (l *Load) Create(node int, ns, name string) {
	v := randomHex(16)
	l.call(node, func(ctx context.Context) error {
		_, err := l.clients[node].CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Data:       map[string][]byte{"v": []byte(v)},
		}, metav1.CreateOptions{})
		if err == nil {
			l.known(ns+"/"+name, v)
		}
		return err
	})
}

func (l *Load) read(node int) {
	l.mu.Lock()
	if len(l.names) == 0 {
		l.mu.Unlock()
		return
	}
	key := l.names[rand.IntN(len(l.names))]
	want := l.want[key]
	l.mu.Unlock()
	ns, name, _ := strings.Cut(key, "/")
	l.call(node, func(ctx context.Context) error {
		s, err := l.clients[node].CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := string(s.Data["v"]); got != want {
			return fmt.Errorf("secret %s: data %q, want %q", key, got, want)
		}
		return nil
	})
}

// call runs op through node unless it is drained, and counts it in the
// phase it started in.
func (l *Load) call(node int, op func(context.Context) error) {
	l.gates[node].RLock()
	defer l.gates[node].RUnlock()
	l.mu.Lock()
	p := l.phase
	l.mu.Unlock()
	err := op(context.Background())
	l.mu.Lock()
	defer l.mu.Unlock()
	p.Ops[node]++
	if err == nil {
		return
	}
	p.Fails[node]++
	msg := describe(err)
	p.Errors[node][blank(msg)]++
	if len(p.Samples[node]) < 3 {
		p.Samples[node] = append(p.Samples[node], msg)
	}
}

// describe is an error as client-go reports it: the HTTP status and
// reason and message of an API error, else the error text.
func describe(err error) string {
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		s := se.Status()
		return fmt.Sprintf("HTTP %d %s: %s", s.Code, s.Reason, s.Message)
	}
	return err.Error()
}

var variable = regexp.MustCompile(`load-n\d-\d+|drill-\d+|127\.0\.0\.\d+:\d+|/tmp/cl\d+|\d+(\.\d+)?(ms|s)\b|uid=\S+`)

// blank groups messages that differ only in names, ports and durations.
func blank(msg string) string { return variable.ReplaceAllString(msg, "…") }

// Phase ends the current phase and starts the next.
func (l *Load) Phase(name string) *Phase {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.phase != nil {
		l.phase.End = now
	}
	p := &Phase{Name: name, Start: now}
	for i := range p.Errors {
		p.Errors[i] = map[string]int{}
	}
	l.phase = p
	l.phases = append(l.phases, p)
	return p
}

// Drain stops new calls through node and waits for those in flight.
func (l *Load) Drain(node int) {
	l.gates[node].Lock()
	l.mu.Lock()
	l.drained[node] = true
	l.mu.Unlock()
}

// Undrain lets calls through node again.
func (l *Load) Undrain(node int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.drained[node] {
		l.drained[node] = false
		l.gates[node].Unlock()
	}
}

// Stop stops the load (undraining every node, so that no call waits
// forever) and returns its phases. Later calls return the same.
func (l *Load) Stop() []*Phase {
	l.stopOnce.Do(func() {
		close(l.stop)
		for i := range l.drained {
			l.Undrain(i)
		}
		l.stopped.Wait()
		l.Phase("")
	})
	return l.phases[:len(l.phases)-1]
}

// Errors lists a phase's distinct failures, node by node.
func (p *Phase) ErrorList() []string {
	var out []string
	for node, errs := range p.Errors {
		for msg, n := range errs {
			out = append(out, fmt.Sprintf("n%d ×%d: %s", node+1, n, msg))
		}
	}
	sort.Strings(out)
	return out
}
