package osthread

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestDoomedNeverOnMainThread: fn never runs on the main thread, however
// the scheduler places the goroutines (the main thread is free here: the
// test runs on another goroutine).
func TestDoomedNeverOnMainThread(t *testing.T) {
	for i := 0; i < 200; i++ {
		tid := make(chan int, 1)
		Doomed(func() { tid <- unix.Gettid() })
		if got := <-tid; got == unix.Getpid() {
			t.Fatalf("run %d: fn ran on the main thread", i)
		}
	}
}
