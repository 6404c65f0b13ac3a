//go:build e2e

package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// timings records how long each phase took, for the table at the end.
type timings struct {
	mu   sync.Mutex
	rows []timing
}

type timing struct {
	name string
	d    time.Duration
}

func (tm *timings) add(name string, d time.Duration) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	tm.rows = append(tm.rows, timing{name, d})
}

func (tm *timings) since(name string, start time.Time) { tm.add(name, time.Since(start)) }

func (tm *timings) table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-28s %9s\n", "phase", "seconds")
	for _, r := range tm.rows {
		fmt.Fprintf(&b, "%-28s %9.1f\n", r.name, r.d.Seconds())
	}
	return b.String()
}

func requireHost(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the e2e tier needs root (debootstrap and mkfs for the guest image): run `sudo make e2e`")
	}
	for _, c := range []string{"qemu-system-x86_64", "debootstrap", "debugfs", "mkfs.ext4", "ssh", "dpkg-buildpackage"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("the e2e tier needs %s (apt-get install qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client dpkg-dev)", c)
		}
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// buildDeb returns the .deb to install: AUTOPOD_E2E_DEB if set, else the
// one `make deb` builds from the working tree.
func buildDeb(ctx context.Context, t *testing.T, repo string) string {
	t.Helper()
	if d := os.Getenv("AUTOPOD_E2E_DEB"); d != "" {
		return d
	}
	cmd := exec.CommandContext(ctx, "make", "-C", repo, "deb")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, lastLines(string(out), 40))
	}
	debs, _ := filepath.Glob(filepath.Join(repo, "build", "packages", "autopod_*_amd64.deb"))
	if len(debs) == 0 {
		t.Fatal("make deb left no build/packages/autopod_*_amd64.deb")
	}
	sort.Slice(debs, func(i, j int) bool {
		a, _ := os.Stat(debs[i])
		b, _ := os.Stat(debs[j])
		return a.ModTime().After(b.ModTime())
	})
	return debs[0]
}
