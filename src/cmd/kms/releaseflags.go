//go:build !kmstest

package main

import "github.com/spf13/pflag"

// defineTestFlags adds nothing to a release build: its floors are fixed
// (see testflags.go).
func defineTestFlags(*pflag.FlagSet, *config) {}
