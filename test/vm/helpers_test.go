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

// TestE2ESmoke boots two guests linked by a private segment, installs the
// .deb on both and checks that the agent is installed as an operator gets
// it: its socket active, the CLI answered over D-Bus (activating the agent),
// and the guests reach each other on the link.
func TestE2ESmoke(t *testing.T) {
	requireHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	repo := repoRoot(t)
	var tm timings
	defer func() { t.Logf("phase timings:\n%s", tm.table()) }()

	start := time.Now()
	img := BuildImage(ctx, t, repo)
	tm.since("image (build or cache)", start)

	start = time.Now()
	deb := buildDeb(ctx, t, repo)
	tm.since("make deb", start)
	t.Logf("package: %s", deb)

	link := NewLink(t)
	cfgs := []GuestConfig{
		{Name: "vm-a", Index: 1, Image: img, Link: link, Side: 0, LinkAddr: "10.44.0.1/24"},
		{Name: "vm-b", Index: 2, Image: img, Link: link, Side: 1, LinkAddr: "10.44.0.2/24"},
	}
	guests := make([]*Guest, len(cfgs))
	errs := make([]error, len(cfgs))

	// Both at once: with 1 vCPU each on 2 cores, about 65 s each.
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			g, err := Boot(ctx, t, cfg)
			guests[i], errs[i] = g, err
			if err == nil {
				tm.since("boot "+cfg.Name, start)
				s := time.Now()
				errs[i] = g.WaitSSH(ctx, 3*time.Minute)
				tm.since("first ssh "+cfg.Name, s)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	start = time.Now()
	for i, g := range guests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := time.Now()
			remote := "/root/" + filepath.Base(deb)
			if err := g.CopyIn(ctx, deb, remote); err != nil {
				errs[i] = err
				return
			}
			_, errs[i] = g.Run(ctx, "DEBIAN_FRONTEND=noninteractive apt-get install -y "+shellQuote(remote))
			tm.since("install "+g.cfg.Name, s)
		}()
	}
	wg.Wait()
	tm.since("install (both, wall)", start)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	start = time.Now()
	for _, g := range guests {
		if out := strings.TrimSpace(g.MustRun(ctx, "systemctl is-active autopod.socket")); out != "active" {
			t.Errorf("%s: autopod.socket is %q, want active", g.cfg.Name, out)
		}
		out, err := g.Run(ctx, "autopodctl status")
		if err != nil {
			t.Errorf("%s: autopodctl status (D-Bus activation of the agent): %v", g.cfg.Name, err)
		} else {
			t.Logf("%s: autopodctl status:\n%s", g.cfg.Name, out)
		}
		if out := strings.TrimSpace(g.MustRun(ctx, "systemctl is-active autopod.service || true")); out != "active" {
			t.Errorf("%s: autopod.service is %q after autopodctl status, want active (D-Bus activation)", g.cfg.Name, out)
		}
		t.Logf("%s: kernel %s, criu %s", g.cfg.Name, g.Kernel,
			strings.TrimSpace(g.MustRun(ctx, "criu --version | head -1")))
	}
	if out, err := guests[0].Run(ctx, "ping -c 3 -W 5 10.44.0.2"); err != nil {
		t.Errorf("vm-a cannot ping vm-b over the private link: %v", err)
	} else {
		t.Logf("vm-a -> vm-b over the link:\n%s", lastLines(out, 2))
	}
	tm.since("checks", start)
	if t.Failed() {
		return
	}

	// A real reboot of vm-b (qemu exits, the kernel is read from its disk,
	// qemu starts again): the agent's socket comes back enabled by its
	// preset, and the link, which survives either side restarting, works.
	start = time.Now()
	before := guests[1].Kernel
	kver, err := guests[1].Reboot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if kver != before {
		t.Errorf("vm-b rebooted into %s, want the same kernel %s", kver, before)
	}
	if err := guests[1].WaitSSH(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	tm.since("reboot vm-b (to ssh)", start)
	if out := strings.TrimSpace(guests[1].MustRun(ctx, "systemctl is-active autopod.socket")); out != "active" {
		t.Errorf("vm-b after reboot: autopod.socket is %q, want active", out)
	}
	if _, err := guests[0].Run(ctx, "ping -c 3 -W 5 10.44.0.2"); err != nil {
		t.Errorf("vm-a cannot ping vm-b over the link after vm-b rebooted: %v", err)
	}
}
