package pods

import (
	"os"
	"testing"
)

// TestMain lets the test binary double as the pod init: the root tests
// hand it to the Manager as InitBinary, as cmd/autopod does with itself.
func TestMain(m *testing.M) {
	if IsInit(os.Args) {
		RunInit(os.Args)
	}
	if addr := os.Getenv(corkedClientEnv); addr != "" {
		corkedClient(addr) // does not return
	}
	os.Exit(m.Run())
}
