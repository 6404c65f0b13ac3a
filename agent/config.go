package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/autopod/autopod/cycle"
	"github.com/autopod/autopod/pods"
)

// DefaultConfigFile is where the agent reads its configuration from.
const DefaultConfigFile = "/etc/autopod/autopod.toml"

// Config is the agent's configuration, from /etc/autopod/autopod.toml.
// Every key is optional; see DefaultConfig.
type Config struct {
	// CriuPath is the CRIU binary: the bundled one if it is installed,
	// else the distribution's.
	CriuPath string `toml:"criu_path"`
	// PodsDir holds the pod definitions, one NAME.toml per pod.
	PodsDir string `toml:"pods_dir"`
	// StateDir holds checkpoint images and runtime state.
	StateDir string `toml:"state_dir"`
	// LogDir holds the pods' output logs.
	LogDir string `toml:"log_dir"`
	// Bridge is the host bridge that pod network interfaces attach to.
	Bridge string `toml:"bridge"`
	// BridgeAddress is the bridge's own address and the pods' subnet.
	BridgeAddress netip.Prefix `toml:"bridge_address"`
	// PeerPort is the TCP port for agent-to-agent traffic (migration).
	PeerPort int `toml:"peer_port"`
	// CgroupRoot is the cgroup directory, under each hierarchy, that holds
	// one child per pod.
	CgroupRoot string `toml:"cgroup_root"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// Watchdog enables the systemd watchdog keepalive.
	Watchdog bool `toml:"watchdog"`
	// MigrationStrategy is how pods move to peers by default: "auto"
	// picks post-copy where both hosts can run it, else pre-copy, else
	// stop-and-copy. `autopodctl migrate --strategy` overrides it.
	MigrationStrategy string `toml:"migration_strategy"`
	// MigrationTimeout is how long a migrating pod stays frozen waiting
	// for the peer to answer before the migration is given up and the
	// pod resumes here (plus the time to move the bytes at 1 MiB/s).
	MigrationTimeout time.Duration `toml:"migration_timeout"`
	// Update is the [update] table: the update cycle's policy.
	Update UpdateConfig `toml:"update"`
}

// UpdateConfig is the [update] table: the cycle's policy (docs/update-cycle.md)
// and how the agent reaches the systems the cycle drives.
type UpdateConfig struct {
	cycle.Policy
	// Peers are the pinned peers that may take this host's pods, in order
	// of preference; empty means every pinned peer, by name.
	Peers []string `toml:"peers"`
	// AptConfig, when set, is given to every apt-get run as APT_CONFIG
	// (a private apt configuration: other lists, another dpkg root).
	AptConfig string `toml:"apt_config"`
	// FleetLockURL, when set, is a FleetLock server whose lock the host
	// also takes before it evacuates (`POST /v1/pre-reboot`).
	FleetLockURL string `toml:"fleetlock_url"`
	// FleetLockGroup is the FleetLock group ("default").
	FleetLockGroup string `toml:"fleetlock_group"`
}

// Paths of the CRIU binary: the bundled build, if installed, wins.
var (
	bundledCriuPath = "/opt/autopod-criu/sbin/criu"
	systemCriuPath  = "/usr/sbin/criu"
)

// DefaultConfig returns the configuration used for missing keys (and when
// there is no configuration file at all).
func DefaultConfig() Config {
	criu := systemCriuPath
	if fi, err := os.Stat(bundledCriuPath); err == nil && !fi.IsDir() {
		criu = bundledCriuPath
	}
	return Config{
		CriuPath:      criu,
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
		MigrationTimeout:  pods.DefaultMigrationTimeout,
		Update:            UpdateConfig{Policy: cycle.DefaultPolicy(), FleetLockGroup: "default"},
	}
}

// configFileError is an error in the configuration file. Its text is
// FILE:LINE: KEY: MSG, without ":LINE" when the line is unknown and
// without "KEY: " when the problem is not with one key.
type configFileError struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *configFileError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// LoadConfig reads the configuration file at path over the defaults. A
// missing file gives the defaults. Errors name the file, the line and the
// key.
func LoadConfig(path string) (Config, error) {
	c := DefaultConfig()
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return c, nil
		}
		return Config{}, err
	}
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		return Config{}, configTOMLError(path, err)
	}
	// Unknown keys, and keys that toml matched only case-insensitively.
	known := map[string]bool{}
	tomlKeys(reflect.TypeOf(Config{}), "", known)
	undecoded := map[string]bool{}
	for _, k := range md.Undecoded() {
		undecoded[k.String()] = true
	}
	for _, k := range md.Keys() {
		ks := k.String()
		if known[ks] && !undecoded[ks] {
			continue
		}
		msg := "unknown key"
		for name := range known {
			if strings.EqualFold(name, ks) && name != ks {
				msg += fmt.Sprintf(" (did you mean %q?)", name)
			}
		}
		line := configKeyLine(data, k[len(k)-1])
		if line == 0 {
			line = configKeyLine(data, k[0])
		}
		return Config{}, &configFileError{File: path, Line: line, Key: ks, Msg: msg}
	}
	if err := c.Validate(); err != nil {
		var ce *configFileError
		if errors.As(err, &ce) {
			ce.File = path
			parts := strings.Split(ce.Key, ".")
			ce.Line = configKeyLine(data, parts[len(parts)-1])
		}
		return Config{}, err
	}
	return c, nil
}

// Validate checks the configuration; the error names the bad key.
func (c Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &configFileError{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	for _, p := range []struct{ key, val string }{
		{"criu_path", c.CriuPath},
		{"pods_dir", c.PodsDir},
		{"state_dir", c.StateDir},
		{"log_dir", c.LogDir},
	} {
		if !filepath.IsAbs(p.val) {
			return bad(p.key, "must be an absolute path, got %q", p.val)
		}
	}
	if n := c.Bridge; n == "" || len(n) > 15 || n == "." || n == ".." || strings.ContainsAny(n, "/: \t\n\r\v\f\x00") {
		return bad("bridge", "%q is not a valid interface name (1 to 15 characters, no '/', ':' or whitespace)", n)
	}
	a := c.BridgeAddress
	if !a.IsValid() || !a.Addr().Is4() || a.Bits() < 1 || a.Bits() > 30 {
		return bad("bridge_address", "must be an IPv4 address with a prefix length from 1 to 30, e.g. \"10.77.0.1/24\", got %q", a.String())
	}
	v, host := binary.BigEndian.Uint32(a.Addr().AsSlice()), uint32(1)<<(32-a.Bits())-1
	switch v & host {
	case 0:
		return bad("bridge_address", "%s is the network address of %s; use a host address such as %s", a.Addr(), a.Masked(), a.Addr().Next())
	case host:
		return bad("bridge_address", "%s is the broadcast address of %s", a.Addr(), a.Masked())
	}
	if c.PeerPort < 1 || c.PeerPort > 65535 {
		return bad("peer_port", "must be between 1 and 65535, got %d", c.PeerPort)
	}
	if r := c.CgroupRoot; r == "" || r == "." || r == ".." || strings.ContainsAny(r, "/\x00\n") {
		return bad("cgroup_root", "must be a directory name (no '/'), got %q", r)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("log_level", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if !slices.Contains(pods.Strategies, c.MigrationStrategy) {
		return bad("migration_strategy", "must be one of %s, got %q", strings.Join(pods.Strategies, ", "), c.MigrationStrategy)
	}
	if c.MigrationTimeout < time.Second {
		return bad("migration_timeout", "must be at least 1s, got %s", c.MigrationTimeout)
	}
	if err := c.Update.Policy.Validate(); err != nil {
		var pe *cycle.PolicyError
		if errors.As(err, &pe) {
			return bad("update."+pe.Key, "%s", pe.Msg)
		}
		return bad("update", "%v", err)
	}
	if c.Update.AptConfig != "" && !filepath.IsAbs(c.Update.AptConfig) {
		return bad("update.apt_config", "must be an absolute path, got %q", c.Update.AptConfig)
	}
	if u := c.Update.FleetLockURL; u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return bad("update.fleetlock_url", "must be an http:// or https:// URL, got %q", u)
	}
	return nil
}

// tomlKeys adds the dotted TOML key of every field of t (recursing into
// tables, arrays of tables and embedded structs) to known.
func tomlKeys(t reflect.Type, prefix string, known map[string]bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		ft := f.Type
		if f.Anonymous && ft.Kind() == reflect.Struct {
			tomlKeys(ft, prefix, known)
			continue
		}
		name := f.Tag.Get("toml")
		if name == "" || name == "-" {
			continue
		}
		key := prefix + name
		known[key] = true
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(netip.Prefix{}) {
			tomlKeys(ft, key+".", known)
		}
	}
}

// configTOMLError converts a toml.Decode error. Syntax errors and errors
// from text values (bridge_address) are toml.ParseErrors with a position;
// type errors are plain errors of the form
// `toml: line N (last key "k"): msg`.
func configTOMLError(file string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &configFileError{File: file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
	}
	e := &configFileError{File: file, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
	if rest, ok := strings.CutPrefix(e.Msg, "line "); ok {
		if sp := strings.IndexByte(rest, ' '); sp > 0 {
			if n, err := strconv.Atoi(rest[:sp]); err == nil {
				e.Line, e.Msg = n, rest[sp+1:]
			}
		}
	}
	if rest, ok := strings.CutPrefix(e.Msg, "(last key "); ok {
		if q, err := strconv.QuotedPrefix(rest); err == nil {
			if k, err := strconv.Unquote(q); err == nil {
				if r, ok := strings.CutPrefix(rest[len(q):], "): "); ok {
					e.Key, e.Msg = k, r
				}
			}
		}
	}
	return e
}

// configKeyLine returns the line of the first `key =` or `[key` (the
// configuration file is flat, so a table is itself an unknown key), or 0.
func configKeyLine(data []byte, key string) int {
	for i, line := range strings.Split(string(data), "\n") {
		l := strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(l, "["); ok {
			l = strings.TrimLeft(rest, "[ \t")
		}
		for _, k := range []string{key, strconv.Quote(key), "'" + key + "'"} {
			if rest, ok := strings.CutPrefix(l, k); ok {
				rest = strings.TrimLeft(rest, " \t")
				if rest != "" && strings.ContainsRune("=.]", rune(rest[0])) {
					return i + 1
				}
			}
		}
	}
	return 0
}
