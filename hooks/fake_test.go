package hooks

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/autopod/autopod/updater"
)

// fakeAgent is the agent for the Runner's tests, and behind the fake autopodctl of
// the root tests. Each call is recorded as a line in calls.
type fakeAgent struct {
	mu    sync.Mutex
	calls []string

	beginErr error
	needed   bool
	// progress is what WaitInstallReady reports before it returns waitErr; with
	// block it then waits for its context instead.
	progress [][2]string
	waitErr  error
	block    bool
	endErr   error
	// onBegin runs inside ExternalInstallBegin (the root tests look at the dpkg
	// frontend lock from there).
	onBegin func()
	// endCtxErr is the error of the context End was given.
	endCtxErr error
}

func (a *fakeAgent) record(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, fmt.Sprintf(format, args...))
}

func (a *fakeAgent) Calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.calls...)
}

func (a *fakeAgent) ExternalInstallBegin(ctx context.Context, tool updater.Backend, pkgs []Package) (bool, error) {
	if _, ok := ctx.Deadline(); !ok {
		return false, fmt.Errorf("begin without a deadline")
	}
	var s []string
	for _, p := range pkgs {
		s = append(s, p.Name+"="+p.NewVersion)
	}
	a.record("begin %s %s", tool, strings.Join(s, " "))
	if a.onBegin != nil {
		a.onBegin()
	}
	return a.needed, a.beginErr
}

func (a *fakeAgent) WaitInstallReady(ctx context.Context, progress func(state, reason string)) error {
	a.record("wait")
	for _, p := range a.progress {
		progress(p[0], p[1])
	}
	if a.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return a.waitErr
}

func (a *fakeAgent) ExternalInstallEnd(ctx context.Context, ok bool, detail string) error {
	a.record("end ok=%v %s", ok, detail)
	a.mu.Lock()
	a.endCtxErr = ctx.Err()
	a.mu.Unlock()
	return a.endErr
}
