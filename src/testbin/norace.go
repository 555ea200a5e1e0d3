//go:build !race

package testbin

// RaceEnabled says whether the tests run with -race.
const RaceEnabled = false
