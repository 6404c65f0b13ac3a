// Package osthread runs code on an operating-system thread of its own, for
// changes that Linux keeps per thread (a mount namespace, a nice value)
// and that must not leak into the threads the Go scheduler shares.
package osthread

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// Doomed runs fn on an OS thread of its own, which ends when fn returns:
// fn may change what only its thread has. It returns at once; fn runs
// meanwhile.
//
// A goroutine that exits locked to its thread takes the thread with it,
// except the process's main thread, which Go keeps (wedged) instead; and
// the main thread is what /proc/self shows, so fn must not run there.
// When the goroutine lands on the main thread, it keeps that thread busy
// while a second goroutine, which then cannot land there, runs fn.
func Doomed(fn func()) {
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			fn()
			return // locked: the thread ends
		}
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			defer close(done)
			fn()
		}()
		<-done
		runtime.UnlockOSThread()
	}()
}
