//go:build kmstest

package main

import "github.com/spf13/pflag"

// Test builds (the kmstest build tag: the daemon src/testbin builds for go
// test, and Bazel's :kms_testing) have the flags that tests of the real
// binary need and an operator must not have: purges and idle connections
// cannot take minutes in a test, and a release binary cannot be made to
// purge or run its command faster than the floors.
func init() {
	defineTestFlags = func(fs *pflag.FlagSet, c *config) {
		fs.DurationVar(&c.minTimeout, "min-timeout", c.minTimeout, "lowest --timeout accepted (test builds only)")
		fs.MarkHidden("min-timeout")
		fs.DurationVar(&c.idleTimeout, "idle-timeout", c.idleTimeout, "close a connection with no call in flight after this long (test builds only)")
		fs.MarkHidden("idle-timeout")
	}
}
