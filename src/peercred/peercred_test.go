package peercred

import (
	"slices"
	"testing"
	"time"
)

func TestParseIDs(t *testing.T) {
	for in, want := range map[string][]uint32{"": nil, " ": nil, "0": {0}, "0, 1000,65534": {0, 1000, 65534}, "4294967294": {4294967294}} {
		got, err := ParseIDs(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ParseIDs(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"root", "-1", "4294967295", "1,,2", "0x10", "1.5"} {
		if got, err := ParseIDs(in); err == nil {
			t.Errorf("ParseIDs(%q) = %v; want an error", in, got)
		}
	}
}

func TestPolicy(t *testing.T) {
	root, api, other := Creds{UID: 0, GID: 0}, Creds{UID: 1000, GID: 2000}, Creds{UID: 1001, GID: 2001}
	for _, tc := range []struct {
		p       Policy
		allowed []Creds
		refused []Creds
	}{
		{Policy{}, []Creds{root, api, other}, nil},
		{Policy{UIDs: []uint32{0}}, []Creds{root}, []Creds{api, other}},
		{Policy{GIDs: []uint32{2000}}, []Creds{api}, []Creds{root, other}},
		// Either list admits.
		{Policy{UIDs: []uint32{0}, GIDs: []uint32{2000}}, []Creds{root, api}, []Creds{other}},
	} {
		for _, c := range tc.allowed {
			if !tc.p.Allows(c) {
				t.Errorf("%+v refuses %+v", tc.p, c)
			}
		}
		for _, c := range tc.refused {
			if tc.p.Allows(c) {
				t.Errorf("%+v allows %+v", tc.p, c)
			}
		}
	}
}

// Each uid's first refusal is logged; then one line per quietPeriod, with
// the count of those not logged.
func TestRefusalsAreLoggedQuietly(t *testing.T) {
	q := quiet{seen: map[uint32]bool{}}
	now := time.Unix(1000, 0)
	type step struct {
		uid            uint32
		after          time.Duration
		ok             bool
		suppressedSeen int
	}
	for i, s := range []step{
		{uid: 1, ok: true},
		{uid: 1, after: time.Second},
		{uid: 1, after: time.Second},
		{uid: 2, after: time.Second, ok: true, suppressedSeen: 2}, // a new uid is named at once
		{uid: 1, after: time.Second},
		{uid: 1, after: quietPeriod, ok: true, suppressedSeen: 1},
		{uid: 2, after: time.Second},
	} {
		now = now.Add(s.after)
		n, ok := q.speak(s.uid, now)
		if ok != s.ok || n != s.suppressedSeen {
			t.Errorf("step %d (uid %d): logged %v suppressed %d; want %v %d", i, s.uid, ok, n, s.ok, s.suppressedSeen)
		}
	}
	// Past maxNamed distinct uids, new ones wait their turn too.
	for uid := range uint32(maxNamed) {
		q.speak(100+uid, now)
	}
	if _, ok := q.speak(1<<20, now); ok {
		t.Error("a new uid was logged at once after maxNamed others")
	}
}
