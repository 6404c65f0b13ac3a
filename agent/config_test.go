package agent

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/autopod/autopod/cycle"
)

func writeConfigFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "autopod.toml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDefaults(t *testing.T) {
	c := DefaultConfig()
	want := Config{
		CriuPath:      c.CriuPath, // checked below
		PodsDir:       "/etc/autopod/pods",
		StateDir:      "/var/lib/autopod",
		LogDir:        "/var/log/autopod",
		Bridge:        "autopod0",
		BridgeAddress: netip.MustParsePrefix("10.77.0.1/24"),
		PeerPort:      7781,
		CgroupRoot:    "autopod",
		LogLevel:      "info",
		Watchdog:      true,

		MigrationStrategy: "auto",
		MigrationTimeout:  time.Minute,
		Update:            UpdateConfig{Policy: cycle.DefaultPolicy(), FleetLockGroup: "default"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}

	// Missing file: defaults.
	got, err := LoadConfig(filepath.Join(t.TempDir(), "none.toml"))
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Errorf("missing file: %+v, %v", got, err)
	}
	// Empty file: defaults.
	got, err = LoadConfig(writeConfigFile(t, "# nothing\n"))
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Errorf("empty file: %+v, %v", got, err)
	}
}

func TestConfigCriuDefault(t *testing.T) {
	defer func(b, s string) { bundledCriuPath, systemCriuPath = b, s }(bundledCriuPath, systemCriuPath)
	dir := t.TempDir()
	bundledCriuPath = filepath.Join(dir, "sbin", "criu")
	systemCriuPath = "/usr/sbin/criu"
	if got := DefaultConfig().CriuPath; got != systemCriuPath {
		t.Errorf("without bundled criu: %q", got)
	}
	if err := os.MkdirAll(filepath.Dir(bundledCriuPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bundledCriuPath, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := DefaultConfig().CriuPath; got != bundledCriuPath {
		t.Errorf("with bundled criu: %q", got)
	}
}

// The packaged file has every key commented out: it yields the defaults,
// and uncommenting every key still does.
func TestConfigPackagedFile(t *testing.T) {
	const packaged = "../packaging/etc/autopod/autopod.toml"
	data, err := os.ReadFile(packaged)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadConfig(packaged)
	if err != nil || !reflect.DeepEqual(got, DefaultConfig()) {
		t.Errorf("packaged file: %+v, %v", got, err)
	}
	var lines []string
	n, table := 0, false
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "#[") {
			table = true
			l = strings.TrimPrefix(l, "#")
		}
		if strings.HasPrefix(l, "#") && strings.Contains(l, " = ") && !strings.HasPrefix(l, "# ") {
			l = strings.TrimPrefix(l, "#")
			if !table {
				n++
			}
		}
		lines = append(lines, l)
	}
	// Every top-level key, then the [update] table.
	if want := reflect.TypeOf(Config{}).NumField() - 1; n != want {
		t.Errorf("packaged file has %d commented-out top-level keys, want %d", n, want)
	}
	got, err = LoadConfig(writeConfigFile(t, strings.Join(lines, "\n")))
	want := DefaultConfig()
	want.CriuPath = got.CriuPath // the file can only show one of the two
	if len(got.Update.Windows) != 1 {
		t.Errorf("uncommented packaged file: windows %+v, want the one example", got.Update.Windows)
	}
	want.Update.Windows = got.Update.Windows // an example; none by default
	if len(got.Update.Peers) == 0 {
		want.Update.Peers = got.Update.Peers // [] for nil
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("uncommented packaged file: %+v, %v", got, err)
	}
}

func TestConfigFull(t *testing.T) {
	p := writeConfigFile(t, `# every key
criu_path = "/usr/local/sbin/criu"
pods_dir = "/srv/autopod/pods"
state_dir = "/srv/autopod/state"
log_dir = "/srv/autopod/log"
bridge = "podbr0"
bridge_address = "192.168.50.1/24"
peer_port = 9000
cgroup_root = "autopod.slice"
log_level = "debug"
watchdog = false
migration_strategy = "stop-and-copy"
migration_timeout = "2m30s"
`)
	got, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		CriuPath:      "/usr/local/sbin/criu",
		PodsDir:       "/srv/autopod/pods",
		StateDir:      "/srv/autopod/state",
		LogDir:        "/srv/autopod/log",
		Bridge:        "podbr0",
		BridgeAddress: netip.MustParsePrefix("192.168.50.1/24"),
		PeerPort:      9000,
		CgroupRoot:    "autopod.slice",
		LogLevel:      "debug",
		Watchdog:      false,

		MigrationStrategy: "stop-and-copy",
		MigrationTimeout:  150 * time.Second,
		Update:            UpdateConfig{Policy: cycle.DefaultPolicy(), FleetLockGroup: "default"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	// A partial file keeps the other defaults.
	got, err = LoadConfig(writeConfigFile(t, "log_level = \"warn\"\n"))
	want = DefaultConfig()
	want.LogLevel = "warn"
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("partial: %+v, %v", got, err)
	}
}

func TestConfigBad(t *testing.T) {
	tests := []struct {
		name, in string
		want     string // the error after "FILE"
	}{
		{"relative criu", "criu_path = \"criu\"\n", `:1: criu_path: must be an absolute path, got "criu"`},
		{"relative pods_dir", "\npods_dir = \"pods\"\n", `:2: pods_dir: must be an absolute path, got "pods"`},
		{"relative state_dir", "state_dir = \"\"\n", `:1: state_dir: must be an absolute path, got ""`},
		{"relative log_dir", "log_dir = \"log\"\n", `:1: log_dir: must be an absolute path, got "log"`},
		{"bridge name", "bridge = \"a:b\"\n", `:1: bridge: "a:b" is not a valid interface name`},
		{"bridge long", "bridge = \"autopod-bridge-00\"\n", `:1: bridge: "autopod-bridge-00" is not a valid interface name`},
		{"bridge_address syntax", "bridge_address = \"10.77.0.1\"\n", `:1: bridge_address: netip.ParsePrefix("10.77.0.1"): no '/'`},
		{"bridge_address ipv6", "bridge_address = \"fd00::1/64\"\n", `:1: bridge_address: must be an IPv4 address`},
		{"bridge_address /31", "bridge_address = \"10.0.0.1/31\"\n", `:1: bridge_address: must be an IPv4 address with a prefix length from 1 to 30`},
		{"bridge_address network", "bridge_address = \"10.77.0.0/24\"\n", `:1: bridge_address: 10.77.0.0 is the network address of 10.77.0.0/24`},
		{"bridge_address broadcast", "bridge_address = \"10.77.0.255/24\"\n", `:1: bridge_address: 10.77.0.255 is the broadcast address of 10.77.0.0/24`},
		{"port zero", "peer_port = 0\n", `:1: peer_port: must be between 1 and 65535, got 0`},
		{"port large", "peer_port = 65536\n", `:1: peer_port: must be between 1 and 65535, got 65536`},
		{"port string", "\n\npeer_port = \"7781\"\n", `:3: peer_port: incompatible types: TOML value has type string; destination has type integer`},
		{"cgroup_root slash", "cgroup_root = \"a/b\"\n", `:1: cgroup_root: must be a directory name (no '/'), got "a/b"`},
		{"cgroup_root empty", "cgroup_root = \"\"\n", `:1: cgroup_root: must be a directory name (no '/'), got ""`},
		{"log level", "log_level = \"verbose\"\n", `:1: log_level: must be debug, info, warn or error, got "verbose"`},
		{"strategy", "migration_strategy = \"live\"\n", `:1: migration_strategy: must be one of auto, stop-and-copy, post-copy, pre-copy, got "live"`},
		{"migration_timeout short", "migration_timeout = \"500ms\"\n", `:1: migration_timeout: must be at least 1s, got 500ms`},
		{"migration_timeout syntax", "migration_timeout = \"soon\"\n", `:1: migration_timeout: invalid duration: "soon"`},
		{"watchdog type", "watchdog = \"yes\"\n", `:1: watchdog: incompatible types: TOML value has type string; destination has type boolean`},
		{"unknown key", "log_level = \"info\"\nlisten = \":80\"\n", `:2: listen: unknown key`},
		{"unknown table", "watchdog = true\n\n[peer]\nport = 1\n", `:3: peer: unknown key`},
		{"unknown dotted", "peer.port = 1\n", `:1: peer.port: unknown key`},
		{"wrong case", "# c\nLog_Level = \"info\"\n", `:2: Log_Level: unknown key (did you mean "log_level"?)`},
		{"syntax", "log_level = debug\n", `:1: log_level: expected value but found "debug" instead`},
		{"duplicate", "watchdog = true\nwatchdog = false\n", `:2: watchdog: Key 'watchdog' has already been defined.`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeConfigFile(t, tt.in)
			_, err := LoadConfig(p)
			if err == nil {
				t.Fatal("no error")
			}
			got, ok := strings.CutPrefix(err.Error(), p)
			if !ok || !strings.HasPrefix(got, tt.want) {
				t.Errorf("got  %q\nwant %q", err, p+tt.want)
			}
		})
	}
}

func TestConfigUnreadable(t *testing.T) {
	// A directory where the file is expected.
	if _, err := LoadConfig(t.TempDir()); err == nil {
		t.Error("no error for a directory")
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.PeerPort = -1
	err := c.Validate()
	if err == nil || err.Error() != "peer_port: must be between 1 and 65535, got -1" {
		t.Errorf("got %v", err)
	}
	c = DefaultConfig()
	c.BridgeAddress = netip.Prefix{}
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "bridge_address: ") {
		t.Errorf("zero bridge_address: %v", err)
	}
}

func TestConfigUpdateTable(t *testing.T) {
	p := writeConfigFile(t, `log_level = "info"

[update]
mode = "notify"
updates = "all"
reboot_method = "kexec"
no_peer = "local-checkpoint"
peers = ["hostb", "hostc"]
apt_config = "/srv/apt/apt.conf"
fleetlock_url = "http://10.0.0.9:8080"
evacuation_timeout = "10m"

[[update.window]]
days = ["sat", "sun"]
start = "02:00"
length = "3h"
time_zone = "Europe/Berlin"
`)
	got, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	u := got.Update
	if u.Mode != cycle.ModeNotify || u.Updates != cycle.UpdatesAll || u.RebootMethod != cycle.RebootKexec ||
		u.NoPeer != cycle.NoPeerLocalCheckpoint || u.EvacuationTimeout != 10*time.Minute ||
		!reflect.DeepEqual(u.Peers, []string{"hostb", "hostc"}) || u.AptConfig != "/srv/apt/apt.conf" ||
		u.FleetLockURL != "http://10.0.0.9:8080" || u.FleetLockGroup != "default" || u.InstallTimeout != time.Hour {
		t.Errorf("got %+v", u)
	}
	if len(u.Windows) != 1 || u.Windows[0].Start != "02:00" || u.Windows[0].TimeZone != "Europe/Berlin" {
		t.Errorf("windows %+v", u.Windows)
	}

	for _, c := range []struct{ name, file, want string }{
		{"bad mode", "[update]\nmode = \"sometimes\"\n", ":2: update.mode: "},
		{"unknown key", "[update]\nmodes = \"notify\"\n", ":2: update.modes: unknown key"},
		{"window key", "[[update.window]]\nstart = \"02:00\"\nlenght = \"1h\"\n", ":3: update.window.lenght: unknown key"},
		{"relative apt config", "[update]\napt_config = \"apt.conf\"\n", ":2: update.apt_config: must be an absolute path"},
		{"fleetlock url", "[update]\nfleetlock_url = \"10.0.0.9\"\n", ":2: update.fleetlock_url: must be an http://"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadConfig(writeConfigFile(t, c.file))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want %q", err, c.want)
			}
		})
	}
}
