package pods

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const specDir = "testdata/specs"

func readSpecFile(t *testing.T, name string) (string, []byte) {
	t.Helper()
	file := filepath.Join(specDir, name)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return file, data
}

func TestParseSpecGood(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		file string
		want Spec
	}{
		{"minimal.toml", Spec{
			Name: "minimal", Command: "/bin/sleep", WorkDir: "/", Hostname: "minimal",
			Root: RootSpec{Mode: RootHost}, Restart: RestartNo,
		}},
		{"full.toml", Spec{
			Name:     "full",
			Command:  "/usr/bin/redis-server",
			Args:     []string{"--port", "6379", "--save", ""},
			Env:      map[string]string{"REDIS_MODE": "pod", "LC_ALL": "C.UTF-8"},
			WorkDir:  "/var/lib/redis",
			User:     "redis",
			Hostname: "cache",
			Root:     RootSpec{Mode: RootHost, ReadOnly: true},
			Mounts: []Mount{
				{Source: "/srv/cache", Target: "/data"},
				{Source: "/etc/redis", Target: "/etc/redis", ReadOnly: true},
			},
			Network: NetworkSpec{Address: pfx("10.77.0.10/24"), Gateway: addr("10.77.0.1"), Bridge: "autopod0"},
			Limits:  Limits{Memory: "512M", MemoryBytes: 512 << 20, CPUWeight: 100, Pids: 512},
			Restart: RestartOnFailure,
		}},
		{"example.toml", Spec{
			Name:     "example",
			Command:  "/usr/bin/redis-server",
			Args:     []string{"--port", "6379", "--save", ""},
			Env:      map[string]string{"REDIS_MODE": "pod"},
			WorkDir:  "/var/lib/redis",
			User:     "redis",
			Hostname: "cache",
			Root:     RootSpec{Mode: RootHost},
			Mounts:   []Mount{{Source: "/srv/cache", Target: "/data"}},
			Network:  NetworkSpec{Address: pfx("10.77.0.10/24"), Gateway: addr("10.77.0.1"), Bridge: "autopod0"},
			Limits:   Limits{Memory: "512M", MemoryBytes: 512 << 20, CPUWeight: 100, Pids: 512},
			Restart:  RestartOnFailure,
		}},
		{"dirroot.toml", Spec{
			Name: "dirroot", Command: "/sbin/init", User: "1000:1000", WorkDir: "/", Hostname: "dirroot",
			Root:    RootSpec{Mode: RootDir, Path: "/var/lib/autopod/roots/alpine", ReadOnly: true},
			Network: NetworkSpec{Address: pfx("10.77.0.20/24"), Gateway: addr("10.77.0.1")},
			Restart: RestartNo,
		}},
		{"inline.toml", Spec{
			Name: "inline", Command: "/bin/sh", Args: []string{"-c", "sleep infinity"},
			Env:     map[string]string{"A": "1", "B": "2"},
			WorkDir: "/", Hostname: "inline",
			Root: RootSpec{Mode: RootHost},
			Mounts: []Mount{
				{Source: "/a", Target: "/mnt/a"},
				{Source: "/b", Target: "/mnt/b", ReadOnly: true},
			},
			Network: NetworkSpec{Address: pfx("192.168.5.6/30"), Gateway: addr("192.168.5.5")},
			Limits:  Limits{Memory: "1.5G", MemoryBytes: 3 << 29, Pids: 64},
			Restart: RestartNo,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			file, data := readSpecFile(t, tt.file)
			got, err := ParseSpec(file, data)
			if err != nil {
				t.Fatalf("ParseSpec: %v", err)
			}
			tt.want.File = file
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if err := validateSpec(&got); err != nil {
				t.Errorf("validateSpec(result): %v", err)
			}
		})
	}
}

// badSpecs lists every bad file in testdata/specs with the error it must
// produce.
var badSpecs = []struct {
	file  string
	line  int
	field string
	msg   string // substring of Msg
}{
	{"BadName.toml", 0, "", `invalid pod name "BadName"`},
	{"bad-syntax.toml", 3, "args", "expected a comma"},
	{"bad-type.toml", 3, "hostname", "expected a string, got an integer"},
	{"bad-args-type.toml", 4, "args[1]", "expected a string, got an integer"},
	{"bad-unknown.toml", 4, "limits.swap", "unknown field"},
	{"bad-unknown-table.toml", 3, "volumes", "unknown field"},
	{"bad-unknown-case.toml", 1, "Command", `unknown field (did you mean "command"?)`},
	{"bad-unknown-name.toml", 2, "name", "unknown field"},
	{"bad-command-missing.toml", 0, "command", "required"},
	{"bad-command-relative.toml", 2, "command", "must be an absolute path"},
	{"bad-env-empty.toml", 4, `env.""`, "empty variable name"},
	{"bad-env-equals.toml", 4, `env."A=B"`, "contains '='"},
	{"bad-workdir.toml", 2, "workdir", "must be an absolute path"},
	{"bad-user.toml", 2, "user", `"Redis": want a user name`},
	{"bad-user-gid.toml", 2, "user", `"1000:staff"`},
	{"bad-hostname.toml", 2, "hostname", "starts or ends with '-'"},
	{"bad-hostname-long.toml", 2, "hostname", "longer than 64 characters"},
	{"bad-root-mode.toml", 3, "root.mode", `must be "host" or "dir", got "image"`},
	{"bad-root-dir-nopath.toml", 3, "root.path", `required with mode = "dir"`},
	{"bad-root-dir-relative.toml", 4, "root.path", "must be an absolute path"},
	{"bad-root-host-path.toml", 3, "root.path", `not allowed with mode = "host"`},
	{"bad-mount-source.toml", 6, "mount[1].source", "must be an absolute path"},
	{"bad-mount-target-relative.toml", 4, "mount[0].target", "must be an absolute path"},
	{"bad-mount-target-root.toml", 4, "mount[0].target", `must not be "/"`},
	{"bad-mount-dup.toml", 7, "mount[1].target", "already the target of mount[0]"},
	{"bad-mount-type.toml", 8, "mount[1].readonly", "expected a boolean, got a string"},
	{"bad-mount-unknown.toml", 8, "mount[1].options", "unknown field"},
	{"bad-net-syntax.toml", 3, "network.address", `"10.77.0.10" (want e.g. "10.77.0.10/24"): no '/'`},
	{"bad-net-ipv6.toml", 3, "network.address", "must be an IPv4 address"},
	{"bad-net-prefixlen.toml", 2, "network.address", "prefix length must be between 1 and 30, got /31"},
	{"bad-net-network.toml", 3, "network.address", "is the network address of 10.77.0.0/24"},
	{"bad-net-broadcast.toml", 3, "network.address", "is the broadcast address of 10.77.0.0/24"},
	{"bad-gateway-outside.toml", 4, "network.gateway", "10.78.0.1 is not in 10.77.0.0/24"},
	{"bad-gateway-same.toml", 4, "network.gateway", "must differ from the pod's address"},
	{"bad-gateway-default.toml", 3, "network.address", "10.77.0.1 is the default gateway"},
	{"bad-gateway-noaddr.toml", 3, "network.gateway", "set without network.address"},
	{"bad-gateway-syntax.toml", 2, "network.gateway", `invalid IP address "10.77.0"`},
	{"bad-bridge.toml", 4, "network.bridge", "longer than 15 characters"},
	{"bad-memory-small.toml", 3, "limits.memory", "must be at least 4M"},
	{"bad-memory-syntax.toml", 3, "limits.memory", `invalid size "512X"`},
	{"bad-memory-int.toml", 3, "limits.memory", `expected a string such as "512M"`},
	{"bad-cpu-weight.toml", 3, "limits.cpu_weight", "must be between 1 and 10000, got 10001"},
	{"bad-cpu-weight-zero.toml", 3, "limits.cpu_weight", "must be between 1 and 10000, got 0"},
	{"bad-cpu-weight-negative.toml", 3, "limits.cpu_weight", "must not be negative"},
	{"bad-pids-negative.toml", 3, "limits.pids", "got -1"},
	{"bad-pids-zero.toml", 3, "limits.pids", "must be at least 1, got 0"},
	{"bad-restart.toml", 2, "restart", `got "sometimes"`},
	{"bad-order.toml", 3, "workdir", "must be an absolute path"},
}

func TestParseSpecBad(t *testing.T) {
	for _, tt := range badSpecs {
		t.Run(tt.file, func(t *testing.T) {
			file, data := readSpecFile(t, tt.file)
			_, err := ParseSpec(file, data)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
			}
			var se *SpecError
			if !errors.As(err, &se) {
				t.Fatalf("%T is not a *SpecError: %v", err, err)
			}
			if se.File != file || se.Line != tt.line || se.Field != tt.field || !strings.Contains(se.Msg, tt.msg) {
				t.Errorf("got  %q (file %q line %d field %q)\nwant file %q line %d field %q msg containing %q",
					err, se.File, se.Line, se.Field, file, tt.line, tt.field, tt.msg)
			}
		})
	}
}

// Every file in testdata/specs is covered by a test.
func TestSpecFilesCovered(t *testing.T) {
	known := map[string]bool{"minimal.toml": true, "full.toml": true, "example.toml": true, "dirroot.toml": true, "inline.toml": true}
	for _, b := range badSpecs {
		known[b.file] = true
	}
	files, _ := filepath.Glob(filepath.Join(specDir, "*.toml"))
	for _, f := range files {
		if !known[filepath.Base(f)] {
			t.Errorf("%s is not covered by a test", f)
		}
	}
}

// Several problems: the error is the first one in the file, every time
// (the toml package's map walks are randomised).
func TestParseSpecDeterministic(t *testing.T) {
	in := []byte(`command = 1
workdir = 2
[env]
A = 1
B = 2
C = 3
[network]
address = "x"
gateway = "y"
[limits]
memory = 3
pids = "x"
`)
	for i := 0; i < 50; i++ {
		_, err := ParseSpec("p.toml", in)
		if got, want := err.Error(), "p.toml:1: command: expected a string, got an integer"; got != want {
			t.Fatalf("run %d: got %q, want %q", i, got, want)
		}
	}
	in = []byte("command = \"/x\"\n[network]\ngateway = \"y\"\naddress = \"x\"\n")
	for i := 0; i < 50; i++ {
		_, err := ParseSpec("p.toml", in)
		var se *SpecError
		if !errors.As(err, &se) || se.Line != 3 || se.Field != "network.gateway" {
			t.Fatalf("run %d: got %v", i, err)
		}
	}
}

func TestParseSpecMore(t *testing.T) {
	tests := []struct {
		name, in string
		err      string // "" for success
	}{
		{"duplicate key", "command = \"/a\"\ncommand = \"/b\"\n", "x.toml:2: command: Key 'command' has already been defined."},
		{"duplicate key in array table", "command = \"/a\"\n[[mount]]\nsource = \"/a\"\n[[mount]]\nsource = \"/b\"\nsource = \"/c\"\n",
			"x.toml:6: mount[1].source: Key 'mount.source' has already been defined."},
		{"unterminated string", "command = \"/a\n", "x.toml:1: command: strings cannot contain newlines"},
		{"int out of range", "command = \"/a\"\nlimits.pids = 99999999999999999999\n", "x.toml:2: limits.pids: 99999999999999999999 is out of range for int64"},
		{"table as string", "command = \"/a\"\nroot = \"host\"\n", "x.toml:2: root: expected a table, got a string"},
		{"mount not array", "command = \"/a\"\nmount = { source = \"/a\" }\n", "x.toml:2: mount: expected an array, got a table"},
		{"inline mount error", "command = \"/a\"\nmount = [\n  { source = \"/a\", target = \"/a\" },\n  { source = \"b\", target = \"/b\" },\n]\n",
			"x.toml:4: mount[1].source: must be an absolute path, got \"b\""},
		{"multiline inline table", "command = \"/a\"\nnetwork = {\n  address = \"10.1.0.5/16\",\n  gateway = \"10.2.0.1\",\n}\n",
			"x.toml:4: network.gateway: 10.2.0.1 is not in 10.1.0.0/16"},
		{"dotted parent fallback", "command = \"/a\"\nroot.mode = \"dir\"\n", "x.toml:2: root.path: required with mode = \"dir\""},
		{"args NUL", "command = \"/a\"\nargs = [\"x\", \"a\\u0000b\"]\n", "x.toml:2: args[1]: must not contain NUL"},
		{"env NUL", "command = \"/a\"\n[env]\nA = \"x\\u0000\"\n", "x.toml:3: env.A: must not contain NUL"},
		{"bridge without address", "command = \"/a\"\n[network]\nbridge = \"br0\"\n", "x.toml:3: network.bridge: set without network.address"},
		{"bridge with slash", "command = \"/a\"\nnetwork = { address = \"10.0.0.2/8\", bridge = \"a/b\" }\n", "x.toml:2: network.bridge: \"a/b\": interface names must not contain '/', ':' or whitespace"},
		{"pids too large", "command = \"/a\"\nlimits.pids = 4194305\n", "x.toml:2: limits.pids: must be between 1 and 4194304, got 4194305"},
		{"uid max", "command = \"/a\"\nuser = \"4294967295\"\n", "x.toml:2: user: \"4294967295\": want a user name ([a-z_][a-z0-9_-]*, at most 32 characters), a uid or uid:gid"},
		{"memory too large", "command = \"/a\"\nlimits.memory = \"9999999T\"\n", "x.toml:2: limits.memory: invalid size \"9999999T\": too large"},
		{"prefix /30 ok", "command = \"/a\"\nnetwork.address = \"10.0.0.2/30\"\n", ""},
		{"prefix /1 ok", "command = \"/a\"\nnetwork.address = \"10.0.0.2/1\"\n", ""},
		{"uid:gid", "command = \"/a\"\nuser = \"0:0\"\n", ""},
		{"underscore name", "command = \"/a\"\nuser = \"_apt\"\n", ""},
		{"comments and CRLF", "# c\r\ncommand = \"/a\" # c\r\n[limits] # c\r\nmemory = '64MiB'\r\n", ""},
		{"restart always", "command = \"/a\"\nrestart = \"always\"\n", ""},
		{"explicit empty strings default", "command = \"/a\"\nrestart = \"\"\nworkdir = \"\"\n", ""},
		{"empty file", "", "x.toml: command: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSpec("x.toml", []byte(tt.in))
			got := ""
			if err != nil {
				got = err.Error()
				var se *SpecError
				if !errors.As(err, &se) {
					t.Errorf("%T is not a *SpecError", err)
				}
			}
			if got != tt.err {
				t.Errorf("got  %q\nwant %q", got, tt.err)
			}
		})
	}
}

func TestHostnameDefault(t *testing.T) {
	for name, want := range map[string]string{
		"web":      "web",
		"web.1":    "web.1",
		"my_pod":   "my_pod",
		"a..b":     "a--b",
		"db-":      "db",
		"x.-y":     "x--y",
		"cache.v2": "cache.v2",
	} {
		s, err := ParseSpec("/etc/autopod/pods/"+name+".toml", []byte(`command = "/a"`))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if s.Hostname != want {
			t.Errorf("%s: hostname %q, want %q", name, s.Hostname, want)
		}
		if s.Name != name {
			t.Errorf("%s: name %q", name, s.Name)
		}
	}
}

func TestSpecErrorFormat(t *testing.T) {
	tests := []struct {
		e    SpecError
		want string
	}{
		{SpecError{File: "/p/a.toml", Line: 3, Field: "network.address", Msg: "bad"}, "/p/a.toml:3: network.address: bad"},
		{SpecError{File: "/p/a.toml", Field: "command", Msg: "required"}, "/p/a.toml: command: required"},
		{SpecError{File: "/p/a.toml", Line: 7, Msg: "syntax"}, "/p/a.toml:7: syntax"},
		{SpecError{File: "/p/a.toml", Msg: "bad name"}, "/p/a.toml: bad name"},
		{SpecError{Field: "command", Msg: "required"}, "command: required"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
		if !errors.Is(&tt.e, ErrInvalid) {
			t.Errorf("%q: not ErrInvalid", tt.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false},
		{"1048576", 1048576, false},
		{"512M", 512 << 20, false},
		{"512m", 512 << 20, false},
		{"512MB", 512 << 20, false},
		{"512mib", 512 << 20, false},
		{"64MiB", 64 << 20, false},
		{"2G", 2 << 30, false},
		{"2gb", 2 << 30, false},
		{"1.5G", 3 << 29, false},
		{"1.5 G", 3 << 29, false},
		{" 4K ", 4096, false},
		{"1T", 1 << 40, false},
		{"1TiB", 1 << 40, false},
		{"100B", 100, false},
		{"100b", 100, false},
		{"1.1K", 1126, false}, // 1126.4, rounded down
		{"0.5", 0, false},
		{"007M", 7 << 20, false},
		{"8388607T", 8388607 << 40, false},
		{"9223372036854775807", 9223372036854775807, false},
		{"9223372036854775808", 0, true},
		{"8388608T", 0, true},
		{"", 0, true},
		{" ", 0, true},
		{"M", 0, true},
		{"-1M", 0, true},
		{"+1M", 0, true},
		{"1.M", 0, true},
		{".5M", 0, true},
		{"1..5M", 0, true},
		{"1iB", 0, true},
		{"1P", 0, true},
		{"1MM", 0, true},
		{"1e6", 0, true},
		{"0x10", 0, true},
		{"1_000", 0, true},
		{strings.Repeat("1", 65), 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestScanKeyLines(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want map[string]int
	}{
		{"top level", "a = 1\n\n# c\nb = \"x\" # c\n", map[string]int{"a": 1, "b": 4}},
		{"tables", "[t]\nx = 1\n[u.v]\ny = 2\n", map[string]int{"t": 1, "t.x": 2, "u": 3, "u.v": 3, "u.v.y": 4}},
		{"array tables", "[[m]]\ns = 1\n[[m]]\ns = 2\nt = 3\n", map[string]int{"m": 1, "m[0]": 1, "m[0].s": 2, "m[1]": 3, "m[1].s": 4, "m[1].t": 5}},
		{"nested array table", "[[a]]\n[[a.b]]\nx = 1\n[[a]]\n[[a.b]]\nx = 2\n",
			map[string]int{"a": 1, "a[0]": 1, "a[0].b": 2, "a[0].b[0]": 2, "a[0].b[0].x": 3, "a[1]": 4, "a[1].b": 5, "a[1].b[0]": 5, "a[1].b[0].x": 6}},
		{"subtable of array table", "[[a]]\n[a.t]\nx = 1\n", map[string]int{"a": 1, "a[0]": 1, "a[0].t": 2, "a[0].t.x": 3}},
		{"dotted", "n.addr = 1\nn.gw = 2\n", map[string]int{"n": 1, "n.addr": 1, "n.gw": 2}},
		{"dotted with spaces", "n . addr = 1\n", map[string]int{"n": 1, "n.addr": 1}},
		{"quoted keys", "[env]\n\"A=B\" = 1\n'C D' = 2\n\"\" = 3\n\"\\u0041\" = 4\n",
			map[string]int{"env": 1, `env."A=B"`: 2, `env."C D"`: 3, `env.""`: 4, "env.A": 5}},
		{"quoted table", "[\"a.b\"]\nx = 1\n", map[string]int{`"a.b"`: 1, `"a.b".x`: 2}},
		{"inline table", "n = { a = 1, b = { c = 2 } }\n", map[string]int{"n": 1, "n.a": 1, "n.b": 1, "n.b.c": 1}},
		{"multi-line inline table", "n = {\n  a = 1, # c\n  b = 2,\n}\nz = 0\n", map[string]int{"n": 1, "n.a": 2, "n.b": 3, "z": 5}},
		{"arrays", "a = [\n 1,\n [2, 3],\n # c\n 4 ]\nb = 5\n", map[string]int{"a": 1, "a[0]": 2, "a[1]": 3, "a[1][0]": 3, "a[1][1]": 3, "a[2]": 5, "b": 6}},
		{"array of inline tables", "m = [\n{s = 1},\n{s = 2, t = 3}]\n", map[string]int{"m": 1, "m[0]": 2, "m[0].s": 2, "m[1]": 3, "m[1].s": 3, "m[1].t": 3}},
		{"strings hide keys", "a = \"x = 1 # [t]\"\nb = '''\nc = 2\n[t]\n'''\nd = \"\"\"\ne = \\\"\"\" \"\"\"\nf = 3\n",
			map[string]int{"a": 1, "b": 2, "d": 6, "f": 8}},
		{"multiline closing quotes", "a = \"\"\"x\"\"\"\"\"\nb = '''y'''''\nc = 1\n", map[string]int{"a": 1, "b": 2, "c": 3}},
		{"datetime with space", "a = 1979-05-27 07:32:00Z\nb = [1979-05-27 07:32:00, 2]\n", map[string]int{"a": 1, "b": 2, "b[0]": 2, "b[1]": 2}},
		{"first occurrence wins", "[t]\n[t.u]\n[t]\n", map[string]int{"t": 1, "t.u": 2}},
		{"bom and crlf", "\ufeffa = 1\r\nb = 2\r\n", map[string]int{"a": 1, "b": 2}},
		{"garbage", "= = =\n[\n[[x\n\"abc\nk = [\n", map[string]int{"k": 5}},
		{"unterminated inline", "k = { a = 1\nb = 2", map[string]int{"k": 1, "k.a": 1, "k.b": 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := scanKeyLines([]byte(tt.in))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestValidateSpec(t *testing.T) {
	ok := Spec{Command: "/bin/x"}
	if err := validateSpec(&ok); err != nil {
		t.Errorf("minimal code-built spec: %v", err)
	}
	tests := []struct {
		name  string
		mod   func(*Spec)
		field string
	}{
		{"memory bytes too small", func(s *Spec) { s.Limits.MemoryBytes = 100 }, "limits.memory"},
		{"memory bytes negative", func(s *Spec) { s.Limits.MemoryBytes = -1 }, "limits.memory"},
		{"memory disagrees", func(s *Spec) { s.Limits.Memory = "8M"; s.Limits.MemoryBytes = 9 << 20 }, "limits.memory"},
		{"bad name", func(s *Spec) { s.Name = "A" }, ""},
		{"ipv6 gateway", func(s *Spec) {
			s.Network.Address = netip.MustParsePrefix("10.0.0.2/24")
			s.Network.Gateway = netip.MustParseAddr("::1")
		}, "network.gateway"},
		{"gateway is broadcast", func(s *Spec) {
			s.Network.Address = netip.MustParsePrefix("10.0.0.2/24")
			s.Network.Gateway = netip.MustParseAddr("10.0.0.255")
		}, "network.gateway"},
		{"4in6 address", func(s *Spec) { s.Network.Address = netip.MustParsePrefix("::ffff:10.0.0.2/120") }, "network.address"},
		{"mount source missing", func(s *Spec) { s.Mounts = []Mount{{Target: "/x"}} }, "mount[0].source"},
		{"mount target missing", func(s *Spec) { s.Mounts = []Mount{{Source: "/x"}} }, "mount[0].target"},
	}
	for _, tt := range tests {
		s := ok
		tt.mod(&s)
		err := validateSpec(&s)
		var se *SpecError
		if !errors.As(err, &se) || se.Field != tt.field {
			t.Errorf("%s: got %v, want an error for field %q", tt.name, err, tt.field)
		}
	}
}

// A parsed spec survives a trip through JSON (as in a checkpoint manifest),
// where Limits.Memory is lost and MemoryBytes is kept.
func TestSpecJSONRoundTrip(t *testing.T) {
	file, data := readSpecFile(t, "full.toml")
	s, err := ParseSpec(file, data)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Spec
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if err := validateSpec(&back); err != nil {
		t.Errorf("after JSON: %v", err)
	}
	s.Limits.Memory = ""
	if !reflect.DeepEqual(back, s) {
		t.Errorf("got  %+v\nwant %+v", back, s)
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("web.toml", "command = \"/usr/bin/web\"\n")
	write("db.toml", "command = \"/usr/bin/db\"\n[limits]\nmemory = \"1G\"\n")
	write("broken.toml", "command = \"/usr/bin/x\"\nworkdir = \"rel\"\n")
	write("Upper.toml", "command = \"/usr/bin/x\"\n")
	write("syntax.toml", "command = \n")
	write("README", "not a pod")
	write("web.toml.bak", "garbage")
	write(".hidden.toml", "garbage")
	if err := os.Mkdir(filepath.Join(dir, "sub.toml"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("web.toml", filepath.Join(dir, "web2.toml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nowhere.toml", filepath.Join(dir, "dangling.toml")); err != nil {
		t.Fatal(err)
	}

	specs, errs := LoadDir(dir)
	var names []string
	for _, s := range specs {
		names = append(names, s.Name)
		if s.File != filepath.Join(dir, s.Name+".toml") {
			t.Errorf("%s: File = %q", s.Name, s.File)
		}
	}
	if want := []string{"db", "web", "web2"}; !reflect.DeepEqual(names, want) {
		t.Errorf("specs %v, want %v", names, want)
	}
	if specs[0].Limits.MemoryBytes != 1<<30 {
		t.Errorf("db memory %d", specs[0].Limits.MemoryBytes)
	}

	var msgs []string
	for _, err := range errs {
		msgs = append(msgs, err.Error())
	}
	want := []string{ // in file name order
		filepath.Join(dir, "Upper.toml") + `: invalid pod name "Upper"`,
		filepath.Join(dir, "broken.toml") + `:2: workdir: must be an absolute path, got "rel"`,
		filepath.Join(dir, "dangling.toml") + ": cannot read: no such file or directory",
		filepath.Join(dir, "syntax.toml") + ":1: command: ",
	}
	if len(msgs) != len(want) {
		t.Fatalf("errors:\n%s", strings.Join(msgs, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(msgs[i], want[i]) {
			t.Errorf("error %d: %q does not start with %q", i, msgs[i], want[i])
		}
	}
	for _, err := range errs {
		var se *SpecError
		if !errors.As(err, &se) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%v (%T) is not a *SpecError", err, err)
		}
	}
}

func TestLoadDirMissing(t *testing.T) {
	specs, errs := LoadDir(filepath.Join(t.TempDir(), "nope"))
	if specs != nil || errs != nil {
		t.Errorf("got %v, %v", specs, errs)
	}
}

func TestLoadDirUnreadable(t *testing.T) {
	// A file where a directory is expected cannot be read as one.
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	specs, errs := LoadDir(f)
	if specs != nil || len(errs) != 1 {
		t.Fatalf("got %v, %v", specs, errs)
	}
	if os.Geteuid() != 0 {
		d := t.TempDir()
		if err := os.Chmod(d, 0); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(d, 0o755)
		if _, errs := LoadDir(d); len(errs) != 1 {
			t.Errorf("unreadable dir: errs %v", errs)
		}
	}
}

func TestScanKeyLinesDeep(t *testing.T) {
	in := "a = " + strings.Repeat("[", 100000) + "\nb = 1\n"
	got := scanKeyLines([]byte(in))
	if got["a"] != 1 || got["b"] != 2 {
		t.Errorf("a at %d, b at %d", got["a"], got["b"])
	}
	_, err := ParseSpec("deep.toml", []byte("command = \"/x\"\nargs = "+strings.Repeat("[", 100000)+"\n"))
	if err == nil {
		t.Error("no error")
	}
}
