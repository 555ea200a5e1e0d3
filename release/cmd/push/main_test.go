package main

import (
	"net/http"
	"strings"
	"testing"
)

type okTransport struct{}

func (okTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200}, nil
}

// Only the guard is exercised: no request leaves the process.
func TestLoopbackOnlyHTTP(t *testing.T) {
	tr := loopbackOnlyHTTP{okTransport{}}
	for url, allowed := range map[string]bool{
		"http://127.0.0.1:5000/v2/":    true,
		"http://127.8.9.10:5000/v2/":   true,
		"http://[::1]:5000/v2/":        true,
		"http://localhost:5000/v2/":    true,
		"https://registry.example/v2/": true,
		"http://192.168.1.2:5000/v2/":  false,
		"http://registry.example/v2/":  false,
		"http://localhost.evil/v2/":    false,
	} {
		req, _ := http.NewRequest("GET", url, nil)
		_, err := tr.RoundTrip(req)
		if (err == nil) != allowed {
			t.Errorf("%s: err %v, want allowed=%v", url, err, allowed)
		}
	}
}

func TestRepositoryNeedsHost(t *testing.T) {
	for _, repo := range []string{"kms", "kms:dev", "team/kms:dev"} {
		if _, err := push(t.TempDir(), repo); err == nil || !strings.Contains(err.Error(), "registry host") {
			t.Errorf("%s: %v", repo, err)
		}
	}
}
