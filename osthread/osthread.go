// Package osthread runs code on an operating-system thread of its own, for
// changes that Linux keeps per thread (a mount namespace, a nice value)
// and that must not leak into the threads the Go scheduler shares; and
// sets a thread's scheduling for background work.
package osthread

import (
	"runtime"
	"time"

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

// ShortSlice is the scheduler slice that Yielding asks for: the shortest
// Linux grants a fair task (sched_setattr's sched_runtime, taken as the
// slice by Linux 6.12 and later; older kernels ignore it). By default a
// task's slice is 0.7 ms times 1 + log2 of the CPUs (1.4 ms on two), and
// Linux may let the task on a CPU run it out before a task that wakes
// there runs.
const ShortSlice = 100 * time.Microsecond

// Yielding gives thread tid (0: the calling thread; a single-threaded
// process's pid: that process) nice value nice and ShortSlice, so that it
// yields its CPU soon to any task that wakes there. Where sched_setattr
// fails (it is Linux 3.14's), it sets the nice value alone. Children
// forked by the thread afterwards inherit both.
func Yielding(tid, nice int) error {
	attr := &unix.SchedAttr{
		Size:    unix.SizeofSchedAttr,
		Policy:  unix.SCHED_NORMAL,
		Nice:    int32(nice),
		Runtime: uint64(ShortSlice.Nanoseconds()),
	}
	if err := unix.SchedSetAttr(tid, attr, 0); err == nil {
		return nil
	}
	return unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
}
