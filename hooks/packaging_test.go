package hooks

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The files autopod ships for the hooks, checked with the tools that read them
// where those are installed (apt-config on Debian, python3 for the dnf plugin); the
// root tier runs real apt and dnf with them.

const (
	aptConfDir    = "../packaging/etc/apt/apt.conf.d"
	dnfPlugin     = "../packaging/usr/lib/python3/dist-packages/dnf-plugins/autopod.py"
	dnfPluginConf = "../packaging/etc/dnf/plugins/autopod.conf"
)

func TestAptConfParses(t *testing.T) {
	aptConfig, err := exec.LookPath("apt-config")
	if err != nil {
		t.Skip("apt-config is not installed (Debian's apt package): cannot check packaging/etc/apt/apt.conf.d")
	}
	dir, err := filepath.Abs(aptConfDir)
	if err != nil {
		t.Fatal(err)
	}
	// apt reads APT_CONFIG, then Dir::Etc::parts, then Dir::Etc::main: only
	// autopod's files here, none of the host's.
	conf := filepath.Join(t.TempDir(), "apt.conf")
	if err := os.WriteFile(conf, []byte(`Dir::Etc::parts "`+dir+`";`+"\n"+`Dir::Etc::main "/nonexistent";`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, aptConfig, "dump")
	cmd.Env = append(os.Environ(), "APT_CONFIG="+conf, "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("apt-config dump: %v\n%s", err, stderr.Bytes())
	}
	for _, want := range []string{
		`DPkg::Pre-Install-Pkgs:: "/usr/bin/autopodctl hook apt-pre-install || [ ! -e /usr/bin/autopodctl ]";`,
		`DPkg::Tools::Options::/usr/bin/autopodctl::Version "3";`,
		`DPkg::Post-Invoke:: "/usr/bin/autopodctl hook apt-post-invoke || true";`,
		`Unattended-Upgrade::Automatic-Reboot "false";`,
	} {
		if !strings.Contains(string(out), "\n"+want+"\n") {
			t.Errorf("apt-config dump lacks %s:\n%s", want, out)
		}
	}
	// Nothing else: a typo would set some other key. (apt-config shows the
	// inner nodes of the tree with an empty value.)
	var ours []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasSuffix(l, ` "";`) {
			continue
		}
		if strings.Contains(strings.ToLower(l), "autopod") || strings.HasPrefix(l, "Unattended-Upgrade") {
			ours = append(ours, l)
		}
	}
	if len(ours) != 4 {
		t.Errorf("autopod's apt.conf.d sets %d keys, want 4:\n%s", len(ours), strings.Join(ours, "\n"))
	}

	// The unattended-upgrades setting wins over unattended-upgrades' own file and
	// the local file Debian's documentation suggests, whatever they say.
	parts := t.TempDir()
	for _, f := range []string{"99autopod", "99autopod-unattended-upgrades"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		writeTestFile(t, filepath.Join(parts, f), string(b))
	}
	writeTestFile(t, filepath.Join(parts, "50unattended-upgrades"), `Unattended-Upgrade::Automatic-Reboot "true";`+"\n")
	writeTestFile(t, filepath.Join(parts, "52unattended-upgrades-local"), `Unattended-Upgrade::Automatic-Reboot "true";`+"\n")
	writeTestFile(t, conf, `Dir::Etc::parts "`+parts+`";`+"\n"+`Dir::Etc::main "/nonexistent";`+"\n")
	cmd = exec.CommandContext(ctx, aptConfig, "dump", "--format", "%v%n", "Unattended-Upgrade::Automatic-Reboot")
	cmd.Env = append(os.Environ(), "APT_CONFIG="+conf, "LC_ALL=C")
	out, err = cmd.Output()
	if err != nil || string(out) != "false\n" {
		t.Errorf("Unattended-Upgrade::Automatic-Reboot with unattended-upgrades' files = %q, %v; want false", out, err)
	}
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDnfPluginFiles(t *testing.T) {
	conf, err := os.ReadFile(dnfPluginConf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "\n[main]\nenabled = 1\n") {
		t.Errorf("%s does not enable the plugin:\n%s", dnfPluginConf, conf)
	}
	python, err := exec.LookPath("/usr/bin/python3")
	if err != nil {
		t.Skip("no /usr/bin/python3: cannot check the dnf plugin's syntax")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// Compiled in memory: no __pycache__ in packaging/.
	out, err := exec.CommandContext(ctx, python, "-c",
		"import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')", dnfPlugin).CombinedOutput()
	if err != nil {
		t.Errorf("%s does not compile: %v\n%s", dnfPlugin, err, out)
	}
}
