//go:build roottest

package packaging

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// logindCycle runs the update cycle under a real systemd and logind: a
// Debian root booted with systemd-nspawn, the .deb installed, a local
// repository offering a new linux-image package. A "block" shutdown
// inhibitor taken with systemd-inhibit holds the reboot back, and
// `autopodctl status` names its holder and reason; once it is released,
// autopod reboots the container through logind.
//
// CRIU cannot work inside the container (its /proc/sys/kernel/ns_last_pid
// is read-only), so no pod really moves there (that is the VM issue's); a
// move made to last a few seconds, which then fails, shows autopod's
// delay lock in logind's list.
func logindCycle(t *testing.T, ctx context.Context, tm *timings, b builds, lower string) {
	step := func(name string) func() { t.Logf("--- %s", name); return tm.track("logind: " + name) }
	done := step("boot, install")
	const kernel = "linux-image-autopodtest-amd64"
	repo := t.TempDir()
	mkdeb := func(version string) string {
		src := filepath.Join(repo, "src-"+version)
		os.MkdirAll(filepath.Join(src, "DEBIAN"), 0o755)
		os.MkdirAll(filepath.Join(src, "usr/share/doc", kernel), 0o755)
		os.WriteFile(filepath.Join(src, "DEBIAN/control"), []byte(fmt.Sprintf(
			"Package: %s\nVersion: %s\nArchitecture: amd64\nMaintainer: autopod tests <tests@autopod.invalid>\nDescription: autopod test kernel\n", kernel, version)), 0o644)
		os.WriteFile(filepath.Join(src, "usr/share/doc", kernel, "version"), []byte(version+"\n"), 0o644)
		out := filepath.Join(repo, kernel+"_"+version+"_amd64.deb")
		run(t, ctx, "", nil, "dpkg-deb", "--root-owner-group", "-Zgzip", "--build", src, out)
		return out
	}
	v1, v2 := mkdeb("6.99.1-1"), mkdeb("6.99.2-1")
	c := bootContainer(t, ctx, lower, func(root string) {
		d := filepath.Join(root, "root/pkgtest")
		r := filepath.Join(root, "srv/aptest/repo")
		for _, dir := range []string{d, r, filepath.Join(root, "srv/aptest/lists/partial")} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		copyTree(t, b.deb, filepath.Join(d, filepath.Base(b.deb)))
		copyTree(t, b.debNext, filepath.Join(d, filepath.Base(b.debNext)))
		copyTree(t, v1, filepath.Join(d, filepath.Base(v1)))
		copyTree(t, v2, filepath.Join(r, filepath.Base(v2)))
		run(t, ctx, r, nil, "sh", "-c", "apt-ftparchive packages . > Packages && apt-ftparchive release . > Release")
		// Only the local repository, and lists of its own: the container's
		// Debian sources stay out of the test.
		os.WriteFile(filepath.Join(root, "srv/aptest/sources.list"), []byte("deb [trusted=yes] file:/srv/aptest/repo ./\n"), 0o644)
		os.WriteFile(filepath.Join(root, "srv/aptest/apt.conf"), []byte(`Dir::Etc::sourcelist "/srv/aptest/sources.list";
Dir::Etc::sourceparts "/srv/aptest/none";
Dir::State::lists "/srv/aptest/lists/";
`), 0o644)
	})
	c.must(ctx, "dpkg", "-i", "/root/pkgtest/"+filepath.Base(b.deb), "/root/pkgtest/"+filepath.Base(v1))
	f, err := os.OpenFile(c.path("/etc/autopod/autopod.toml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(f, "\n[update]\nmode = \"notify\"\napt_config = \"/srv/aptest/apt.conf\"\nretry_interval = \"2s\"\n")
	f.Close()
	c.must(ctx, "env", "APT_CONFIG=/srv/aptest/apt.conf", "apt-get", "-q", "update")
	c.must(ctx, "systemctl", "restart", "autopod.service")
	done()

	type status struct {
		Update struct {
			State    string `json:"state"`
			Reason   string `json:"reason"`
			Blockers []struct {
				Who, Why string
			} `json:"blockers"`
			LastError string `json:"last_error"`
		} `json:"update"`
	}
	getStatus := func() status {
		var st status
		out, _ := c.exec(ctx, "autopodctl", "--json", "status")
		_ = json.Unmarshal([]byte(out), &st)
		return st
	}
	// waitState waits for one of the states in want (space-separated). A
	// cycle that ended goes idle, and at once update-pending again while
	// the update is still there (notify mode).
	waitState := func(want string, d time.Duration) status {
		t.Helper()
		for deadline := time.Now().Add(d); ; time.Sleep(200 * time.Millisecond) {
			st := getStatus()
			if st.Update.State != "" && strings.Contains(" "+want+" ", " "+st.Update.State+" ") {
				return st
			}
			if time.Now().After(deadline) {
				j, _ := c.exec(ctx, "journalctl", "-u", "autopod", "--no-pager", "-n", "40")
				t.Fatalf("the cycle is not %s within %s: %+v\n%s", want, d, st.Update, j)
			}
		}
	}

	var out string
	done = step("the delay lock while pods move")
	// A pod, no peer: the policy checkpoints it to disk, holding a delay
	// lock meanwhile. The move is made to last 5 s (AUTOPOD_FAULT_INJECT),
	// long enough to look at logind's list; then it fails (CRIU cannot run
	// in the container) and the cycle brings everything back.
	os.WriteFile(c.path("/etc/autopod/pods/sleeper.toml"), []byte("command = \"/bin/sleep\"\nargs = [\"infinity\"]\n"), 0o644)
	os.MkdirAll(c.path("/etc/systemd/system/autopod.service.d"), 0o755)
	os.WriteFile(c.path("/etc/systemd/system/autopod.service.d/fault.conf"), []byte("[Service]\nEnvironment=AUTOPOD_FAULT_INJECT=slow:evacuate\n"), 0o644)
	conf, _ := os.ReadFile(c.path("/etc/autopod/autopod.toml"))
	os.WriteFile(c.path("/etc/autopod/autopod.toml"), append(conf, "no_peer = \"local-checkpoint\"\nmax_attempts = 1\n"...), 0o644)
	c.must(ctx, "systemctl", "daemon-reload")
	c.must(ctx, "systemctl", "restart", "autopod.service")
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(c.must(ctx, "autopodctl", "pods"), "running"); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the pod does not run:\n%s", c.must(ctx, "autopodctl", "pods"))
		}
	}
	t.Logf("autopodctl update --now:\n%s", c.must(ctx, "autopodctl", "update", "--now"))
	var locks string
	for deadline := time.Now().Add(8 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		locks = c.must(ctx, "systemd-inhibit", "--list", "--no-pager")
		if strings.Contains(locks, "autopod") && strings.Contains(locks, "delay") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no delay lock of autopod's while the pods move: state %+v\n%s", getStatus().Update, locks)
		}
	}
	t.Logf("systemd-inhibit --list while the pod moves:\n%s", locks)
	done()

	// An upgrade of autopod itself in the middle of the cycle: the
	// package's postinst restarts the agent while it moves the pod; the new
	// agent resumes the persisted cycle and ends it cleanly.
	done = step("upgrade in the middle of the cycle")
	before := getStatus().Update.State
	out = c.must(ctx, "dpkg", "-i", "/root/pkgtest/"+filepath.Base(b.debNext))
	t.Logf("dpkg -i (upgrade during the cycle, in state %s):\n%s", before, out)
	if v := strings.TrimSpace(c.must(ctx, "autopod", "--version")); v != "autopod "+b.versionUp {
		t.Errorf("after the upgrade: %q", v)
	}
	if j, _ := c.exec(ctx, "journalctl", "-u", "autopod", "--no-pager", "-n", "200"); !strings.Contains(j, "update cycle resumes") {
		t.Errorf("the new agent did not resume the cycle:\n%s", j)
	}
	waitState("idle update-pending", 90*time.Second)
	if l := c.must(ctx, "systemd-inhibit", "--list", "--no-pager"); strings.Contains(l, "autopod") {
		t.Errorf("autopod's lock is left after the cycle:\n%s", l)
	}
	if p := c.must(ctx, "autopodctl", "pods"); !strings.Contains(p, "running") {
		t.Errorf("the pod does not run after the failed move:\n%s", p)
	}
	// Back to no pods and no fault for the rest.
	c.must(ctx, "autopodctl", "stop", "sleeper")
	os.Remove(c.path("/etc/autopod/pods/sleeper.toml"))
	os.Remove(c.path("/etc/systemd/system/autopod.service.d/fault.conf"))
	c.must(ctx, "systemctl", "daemon-reload")
	c.must(ctx, "systemctl", "restart", "autopod.service")
	done()

	done = step("a block inhibitor holds the reboot")
	c.must(ctx, "systemd-run", "--unit=aptest-blocker", "systemd-inhibit", "--what=shutdown", "--mode=block",
		"--who=backup-test", "--why=nightly backup", "sleep", "600")
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(c.must(ctx, "systemd-inhibit", "--list"), "backup-test"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the inhibitor did not show up:\n%s", c.must(ctx, "systemd-inhibit", "--list"))
		}
	}
	out = c.must(ctx, "autopodctl", "update", "--check")
	t.Logf("autopodctl update --check:\n%s", out)
	if !strings.Contains(out, kernel) {
		t.Fatalf("the agent does not see the new kernel package")
	}
	t.Logf("autopodctl update --now:\n%s", c.must(ctx, "autopodctl", "update", "--now"))
	var st status
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		st = getStatus()
		if st.Update.State == "rebooting" && len(st.Update.Blockers) > 0 {
			break
		}
		if time.Now().After(deadline) {
			j, _ := c.exec(ctx, "journalctl", "-u", "autopod", "--no-pager", "-n", "40")
			t.Fatalf("the cycle did not stop at the block inhibitor: %+v\n%s", st.Update, j)
		}
	}
	if b := st.Update.Blockers[0]; b.Who != "backup-test" || b.Why != "nightly backup" {
		t.Errorf("blockers %+v", st.Update.Blockers)
	}
	human := c.must(ctx, "autopodctl", "status")
	t.Logf("autopodctl status:\n%s", human)
	if !strings.Contains(human, "Reboot blocked by:") || !strings.Contains(human, "backup-test") || !strings.Contains(human, "nightly backup") {
		t.Errorf("autopodctl status does not say who blocks the reboot and why")
	}
	if v, _ := c.exec(ctx, "dpkg-query", "-W", "-f=${Version}", kernel); v != "6.99.2-1" {
		t.Errorf("%s is %q after the install step", kernel, v)
	}
	// Still there a few seconds (and retries) later.
	time.Sleep(5 * time.Second)
	select {
	case <-c.exited:
		t.Fatal("the container rebooted while a block inhibitor was held")
	default:
	}
	done()

	done = step("released: autopod reboots through logind")
	c.must(ctx, "systemctl", "stop", "aptest-blocker.service")
	select {
	case <-c.exited:
		t.Logf("the container rebooted (systemd-nspawn exited: %v)", c.cmd.ProcessState)
	case <-time.After(60 * time.Second):
		j, _ := c.exec(ctx, "journalctl", "-u", "autopod", "--no-pager", "-n", "40")
		t.Fatalf("no reboot within 60 s of releasing the inhibitor:\n%s", j)
	}
	done()
}
