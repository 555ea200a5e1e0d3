package loopback

import (
	"net/http"
	"testing"
)

type okTransport struct{}

func (okTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200}, nil
}

// Only the guard is exercised: no request leaves the process.
func TestOnlyHTTP(t *testing.T) {
	tr := OnlyHTTP(okTransport{})
	for url, allowed := range map[string]bool{
		"http://127.0.0.1:5000/v2/":    true,
		"http://127.8.9.10:5000/v2/":   true,
		"http://[::1]:5000/v2/":        true,
		"http://localhost:5000/v2/":    true,
		"http://localhost/v2/":         true,
		"https://registry.example/v2/": true,
		"http://192.168.1.2:5000/v2/":  false,
		"http://registry.example/v2/":  false,
		"http://localhost.evil/v2/":    false,
		"http://127.0.0.1.evil/v2/":    false,
	} {
		req, _ := http.NewRequest("GET", url, nil)
		_, err := tr.RoundTrip(req)
		if (err == nil) != allowed {
			t.Errorf("%s: err %v, want allowed=%v", url, err, allowed)
		}
	}
}
