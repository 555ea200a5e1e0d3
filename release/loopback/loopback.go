// Package loopback is the release tools' one rule for plain HTTP: only
// registries on loopback (localhost, 127.0.0.0/8, ::1) may skip TLS, so that
// a typo or a spoofed name never sends an image, or registry credentials, in
// the clear. go-containerregistry itself also speaks plain HTTP to private
// (RFC 1918) addresses, which is too trusting for a release.
package loopback

import (
	"fmt"
	"net"
	"net/http"
)

// Host reports whether host, "HOST" or "HOST:PORT", names a loopback address.
func Host(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// OnlyHTTP wraps next to refuse plain-HTTP requests to anything but loopback.
func OnlyHTTP(next http.RoundTripper) http.RoundTripper { return onlyHTTP{next} }

type onlyHTTP struct{ next http.RoundTripper }

func (t onlyHTTP) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" && !Host(r.URL.Host) {
		return nil, fmt.Errorf("refusing plain HTTP to %s: only loopback registries may skip TLS", r.URL.Host)
	}
	return t.next.RoundTrip(r)
}
