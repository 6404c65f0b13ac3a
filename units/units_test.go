// Package units holds autopod's systemd unit files; its only Go code is this test,
// which checks them with the real systemd-analyze and pins the settings the agent's
// code relies on.
package units

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var unitFiles = []string{"autopod.service", "autopod.socket", "autopod-updates.path"}

// TestVerify runs `systemd-analyze verify` on both units and fails on every line it
// prints about them: systemd only warns (and exits 0) on unknown keys, bad values and
// the like, and then ignores the setting, so the exit code alone proves little.
//
// verify insists that ExecStart= is executable, but /usr/bin/autopod exists only once
// the package is installed. Rather than putting a file there (a bind mount in a
// private mount namespace would need an existing mount point, i.e. a file on the
// host, plus root), the test builds a throwaway root for verify --root= (systemd 252
// resolves ExecStart=, unit search paths and dependencies below it): the host's
// system units, so that sysinit.target, dbus.service, network-online.target and the
// other dependencies are the real ones; our two units in etc/systemd/system; and an
// empty executable at ExecStart='s path. This needs neither root nor a running systemd.
//
// --man=no: the Documentation= page comes with the package and is checked where it
// is built, not here. --recursive-errors=no: an error in some host unit we depend on
// is not ours to fail on.
func TestVerify(t *testing.T) {
	analyze := lookupAnalyze(t)
	root := fakeRoot(t, nil)
	out, err := verify(t, analyze, root)
	t.Logf("systemd-analyze verify output:\n%s", out)
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v", err)
	}
	if lines := aboutUs(out); len(lines) > 0 {
		t.Errorf("systemd-analyze verify complains about our units:\n%s", strings.Join(lines, "\n"))
	}
}

// TestVerifyCatchesWarnings guards TestVerify itself: if the fake root stopped
// loading our files (a moved unit directory, a changed verify), TestVerify would
// pass on anything.
func TestVerifyCatchesWarnings(t *testing.T) {
	analyze := lookupAnalyze(t)
	root := fakeRoot(t, map[string]string{"autopod.service": "\n[Service]\nNoSuchSetting=1\n"})
	// Whether verify also exits non-zero for this depends on the section and the
	// systemd version; the line about it is what TestVerify relies on.
	out, _ := verify(t, analyze, root)
	lines := aboutUs(out)
	if len(lines) == 0 || !strings.Contains(strings.Join(lines, "\n"), "NoSuchSetting") {
		t.Fatalf("a unit with an unknown key produced no warning about it; output:\n%s", out)
	}
}

// TestUnitContract pins the settings that agent code and the pods' survival depend
// on, so that a well-meant cleanup of a unit file fails here rather than on a host.
func TestUnitContract(t *testing.T) {
	want := map[string][]string{
		"autopod.service": {
			"Type=notify",                 // agent/notify.go sends READY=1
			"NotifyAccess=main",           // only the agent, never a pod, may notify
			"BusName=org.autopod.Agent1",  // the name the agent owns
			"KillMode=process",            // pods outlive agent restarts
			"WatchdogSec=30s",             // agent/notify.go pings at half of it
			"Requires=autopod.socket",     // the peer listener comes from systemd
			"ExecStart=/usr/bin/autopod",  // where packaging installs the daemon
			"StateDirectoryMode=0700",     // checkpoint images hold pod memory
			"Also=autopod.socket",         // enabling the agent enables its socket
			"After=autopod.socket",        // ...and it starts after the socket
			"WantedBy=multi-user.target",  // starts at boot once enabled
			"Wants=network-online.target", // peers must be reachable at start
			"ConfigurationDirectory=autopod",
		},
		"autopod.socket": {
			"ListenStream=7781",
			"FileDescriptorName=peer", // agent/listen.go looks the socket up by this name
			"Service=autopod.service",
			"WantedBy=sockets.target",
		},
	}
	for unit, settings := range want {
		data, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, l := range strings.Split(string(data), "\n") {
			l = strings.TrimSpace(l)
			if l != "" && !strings.HasPrefix(l, "#") {
				have[l] = true
			}
		}
		for _, s := range settings {
			if !have[s] {
				t.Errorf("%s: missing %q", unit, s)
			}
		}
		for _, banned := range []string{"ProtectSystem=", "NoNewPrivileges=", "CapabilityBoundingSet=", "SystemCallFilter="} {
			for l := range have {
				if strings.HasPrefix(l, banned) {
					t.Errorf("%s: %q breaks criu, the package manager or the pods (see the comments in autopod.service)", unit, l)
				}
			}
		}
	}
}

func lookupAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (it comes with the systemd package: apt-get install systemd); the unit files are not verified")
	}
	return p
}

// fakeRoot lays out the root for verify --root; extra appends text to our units.
func fakeRoot(t *testing.T, extra map[string]string) string {
	t.Helper()
	root := t.TempDir()
	hostUnits := ""
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			hostUnits = d
			break
		}
	}
	if hostUnits == "" {
		t.Fatal("systemd-analyze is installed but no system unit directory (/usr/lib/systemd/system) was found")
	}
	libDir := filepath.Join(root, "usr/lib/systemd")
	etcDir := filepath.Join(root, "etc/systemd/system")
	for _, d := range []string{libDir, etcDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// cp -a keeps the .wants/ symlinks and masks (links to /dev/null) as they are.
	if out, err := exec.Command("cp", "-a", hostUnits, libDir).CombinedOutput(); err != nil {
		t.Fatalf("copying %s: %v\n%s", hostUnits, err, out)
	}

	for _, u := range unitFiles {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, extra[u]...)
		if err := os.WriteFile(filepath.Join(etcDir, u), data, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, exe := range execPaths(data) {
			p := filepath.Join(root, exe)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

// execPaths returns the programs of a unit's Exec*= lines, so the fake root follows
// the unit if the daemon ever moves (say, to /usr/sbin).
func execPaths(unit []byte) []string {
	var paths []string
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		key, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || !strings.HasPrefix(key, "Exec") {
			continue
		}
		fields := strings.Fields(val)
		if len(fields) == 0 {
			continue
		}
		// Strip the special prefixes of systemd.service(5) ("-", "@", ":", "+", "!").
		if p := strings.TrimLeft(fields[0], "-@:+!"); strings.HasPrefix(p, "/") {
			paths = append(paths, p)
		}
	}
	return paths
}

func verify(t *testing.T, analyze, root string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	args := []string{"verify", "--man=no", "--recursive-errors=no", "--root=" + root}
	args = append(args, unitFiles...)
	cmd := exec.CommandContext(ctx, analyze, args...)
	// Plain lines, so that aboutUs can match them.
	cmd.Env = append(os.Environ(), "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// aboutUs returns the output lines that concern our units: verify names the unit
// ("autopod.service: ...") or its file ("/…/autopod.socket:12: ...").
func aboutUs(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		for _, u := range unitFiles {
			if strings.Contains(l, u) {
				lines = append(lines, l)
				break
			}
		}
	}
	return lines
}
