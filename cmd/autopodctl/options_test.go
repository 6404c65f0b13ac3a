package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseArgs(t *testing.T) {
	cases := []struct {
		args []string
		want options
	}{
		{[]string{"status"}, options{command: "status"}},
		{[]string{"pods"}, options{command: "pods"}},
		{[]string{"list"}, options{command: "pods"}},
		{[]string{"--json", "pods"}, options{command: "pods", json: true}},
		{[]string{"pods", "--json"}, options{command: "pods", json: true}},
		{[]string{"-json", "pods"}, options{command: "pods", json: true}},
		{[]string{"--json=false", "pods"}, options{command: "pods"}},
		{[]string{"pod", "web"}, options{command: "pod", args: []string{"web"}}},
		{[]string{"start", "web"}, options{command: "start", args: []string{"web"}}},
		{[]string{"stop", "web", "--timeout", "30s"}, options{command: "stop", args: []string{"web"}, timeout: 30 * time.Second}},
		{[]string{"--timeout=1m", "restore", "db"}, options{command: "restore", args: []string{"db"}, timeout: time.Minute}},
		{[]string{"checkpoint", "web", "--leave-running"}, options{command: "checkpoint", args: []string{"web"}, leaveRunning: true}},
		{[]string{"checkpoint", "--leave-running", "web"}, options{command: "checkpoint", args: []string{"web"}, leaveRunning: true}},
		{[]string{"--bus", "unix:path=/tmp/b", "status"}, options{command: "status", bus: "unix:path=/tmp/b"}},
		{[]string{"--bus=unix:path=/tmp/b,guid=1", "status"}, options{command: "status", bus: "unix:path=/tmp/b,guid=1"}},
		{[]string{"start", "--", "-odd"}, options{command: "start", args: []string{"-odd"}}},
		{[]string{"version"}, options{command: "version"}},
		{[]string{"migrate", "kv", "--to", "hostb", "--strategy", "pre-copy"}, options{command: "migrate", args: []string{"kv"}, to: "hostb", strategy: "pre-copy"}},
		{[]string{"migrate", "--strategy=auto", "kv", "--to=hostb"}, options{command: "migrate", args: []string{"kv"}, to: "hostb", strategy: "auto"}},
		// Help in all its spellings.
		{[]string{"--help"}, options{help: true}},
		{[]string{"-h"}, options{help: true}},
		{[]string{"help"}, options{help: true}},
		{[]string{"help", "checkpoint"}, options{help: true, command: "checkpoint"}},
		{[]string{"help", "list"}, options{help: true, command: "pods"}},
		{[]string{"checkpoint", "--help"}, options{help: true, command: "checkpoint"}},
		{[]string{"start", "-h"}, options{help: true, command: "start"}},
		// Migration.
		{[]string{"migrate", "kv", "--to", "hostb"}, options{command: "migrate", args: []string{"kv"}, to: "hostb"}},
		{[]string{"--to=hostb", "migrate", "kv"}, options{command: "migrate", args: []string{"kv"}, to: "hostb"}},
		{[]string{"evacuate", "--to", "hostb"}, options{command: "evacuate", to: "hostb"}},
		{[]string{"return", "--json"}, options{command: "return", json: true}},
		// The peer group and its sub-commands.
		{[]string{"peer", "init"}, options{command: "peer init"}},
		{[]string{"peer", "init", "--force"}, options{command: "peer init", force: true}},
		{[]string{"--force", "peer", "init"}, options{command: "peer init", force: true}},
		{[]string{"peer", "cert"}, options{command: "peer cert"}},
		{[]string{"peer", "add", "hostb", "192.0.2.2", "--cert", "b.pem"}, options{command: "peer add", args: []string{"hostb", "192.0.2.2"}, cert: "b.pem"}},
		{[]string{"peer", "--cert=b.pem", "add", "hostb", "192.0.2.2"}, options{command: "peer add", args: []string{"hostb", "192.0.2.2"}, cert: "b.pem"}},
		{[]string{"peer", "remove", "hostb"}, options{command: "peer remove", args: []string{"hostb"}}},
		{[]string{"peer", "rm", "hostb"}, options{command: "peer remove", args: []string{"hostb"}}},
		{[]string{"peer", "list", "--json"}, options{command: "peer list", json: true}},
		{[]string{"peer", "ls"}, options{command: "peer list"}},
		{[]string{"peer", "--help"}, options{help: true, command: "peer"}},
		{[]string{"peer", "add", "--help"}, options{help: true, command: "peer add"}},
		{[]string{"help", "peer"}, options{help: true, command: "peer"}},
		{[]string{"help", "peer", "add"}, options{help: true, command: "peer add"}},
		{[]string{"help", "peer", "rm"}, options{help: true, command: "peer remove"}},
		{[]string{"help", "peer add"}, options{help: true, command: "peer add"}},
		{[]string{"help", "migrate"}, options{help: true, command: "migrate"}},
	}
	for _, c := range cases {
		got, err := parseArgs(c.args)
		if err != nil {
			t.Errorf("parseArgs(%q): %v", c.args, err)
			continue
		}
		if got.command != c.want.command || !slices.Equal(got.args, c.want.args) || got.json != c.want.json ||
			got.timeout != c.want.timeout || got.bus != c.want.bus || got.leaveRunning != c.want.leaveRunning ||
			got.help != c.want.help || got.to != c.want.to || got.force != c.want.force || got.cert != c.want.cert {
			t.Errorf("parseArgs(%q) = %+v, want %+v", c.args, got, c.want)
		}
	}
}

func TestParseArgsUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		msg  string
	}{
		{nil, "no command given"},
		{[]string{"--json"}, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"pods", "--frob"}, "unknown option --frob"},
		{[]string{"pod"}, "usage: autopodctl pod NAME"},
		{[]string{"start", "a", "b"}, "usage: autopodctl start NAME"},
		{[]string{"checkpoint"}, "usage: autopodctl checkpoint [--leave-running] NAME"},
		{[]string{"status", "extra"}, "status takes no arguments"},
		{[]string{"stop", "web", "--leave-running"}, "--leave-running applies only to checkpoint"},
		{[]string{"--timeout"}, "option --timeout needs a value"},
		{[]string{"--timeout", "soon", "status"}, `"soon" is not a positive duration`},
		{[]string{"--timeout", "-5s", "status"}, "not a positive duration"},
		{[]string{"--timeout=0", "status"}, "not a positive duration"},
		{[]string{"--bus=", "status"}, "--bus needs a D-Bus address"},
		{[]string{"--json=maybe", "pods"}, `"maybe" is not true or false`},
		{[]string{"help", "nope"}, `no help for unknown command "nope"`},
		{[]string{"help", "a", "b"}, "at most one command"},
		{[]string{"help", "peer", "add", "x"}, "at most one command"},
		{[]string{"help", "peer", "nope"}, `no help for unknown command "peer nope"`},
		{[]string{"migrate", "kv"}, "migrate needs option --to (usage: autopodctl migrate NAME --to PEER [--strategy S])"},
		{[]string{"migrate", "--to", "hostb"}, "usage: autopodctl migrate NAME --to PEER"},
		{[]string{"migrate", "kv", "--to"}, "option --to needs a value"},
		{[]string{"migrate", "kv", "--to="}, "option --to needs a peer name"},
		{[]string{"evacuate"}, "evacuate needs option --to"},
		{[]string{"migrate", "kv", "--to", "hostb", "--strategy", "teleport"}, `option --strategy: "teleport" is not one of auto, stop-and-copy, post-copy, pre-copy`},
		{[]string{"migrate", "kv", "--to", "hostb", "--strategy"}, "option --strategy needs a value"},
		{[]string{"evacuate", "--to", "hostb", "--strategy", "pre-copy"}, "option --strategy applies only to migrate"},
		{[]string{"evacuate", "hostb"}, "evacuate takes no arguments"},
		{[]string{"return", "--to", "hostb"}, "option --to applies only to migrate and evacuate"},
		{[]string{"stop", "web", "--to", "hostb"}, "option --to applies only to migrate and evacuate"},
		{[]string{"checkpoint", "web", "--force"}, "option --force applies only to peer init"},
		{[]string{"pods", "--cert", "x"}, "option --cert applies only to peer add"},
		{[]string{"peer"}, "peer needs a sub-command: init, cert, add, remove, list"},
		{[]string{"peer", "frob"}, `unknown peer sub-command "frob" (want one of: init, cert, add, remove, list)`},
		{[]string{"peer", "add", "hostb", "192.0.2.2"}, "peer add needs option --cert"},
		{[]string{"peer", "add", "hostb", "--cert", "b.pem"}, "usage: autopodctl peer add NAME ADDRESS --cert FILE"},
		{[]string{"peer", "remove"}, "usage: autopodctl peer remove NAME"},
		{[]string{"peer", "list", "extra"}, "peer list takes no arguments"},
		{[]string{"peer", "init", "--force=maybe"}, `"maybe" is not true or false`},
	}
	for _, c := range cases {
		_, err := parseArgs(c.args)
		if err == nil || !isUsage(err) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("parseArgs(%q) = %v, want usage error containing %q", c.args, err, c.msg)
		}
	}
}

func TestBusAddress(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "DBUS_SYSTEM_BUS_ADDRESS" {
				return v
			}
			return ""
		}
	}
	if got := busAddress("", env("")); got != "unix:path=/run/dbus/system_bus_socket" {
		t.Errorf("default = %q", got)
	}
	if got := busAddress("", env("unix:path=/x")); got != "unix:path=/x" {
		t.Errorf("env = %q", got)
	}
	if got := busAddress("unix:path=/flag", env("unix:path=/x")); got != "unix:path=/flag" {
		t.Errorf("flag = %q", got)
	}
}

func TestCommandTimeout(t *testing.T) {
	for cmd, want := range map[string]time.Duration{
		"status": 10 * time.Second, "pods": 10 * time.Second, "start": 10 * time.Second,
		"checkpoint": 5 * time.Minute, "restore": 5 * time.Minute,
		"migrate": 30 * time.Minute, "evacuate": 30 * time.Minute, "return": 30 * time.Minute,
		"peer init": 10 * time.Second, "peer list": 10 * time.Second,
	} {
		if got := commandTimeout(options{command: cmd}); got != want {
			t.Errorf("%s: %v, want %v", cmd, got, want)
		}
	}
	if got := commandTimeout(options{command: "checkpoint", timeout: time.Hour}); got != time.Hour {
		t.Errorf("--timeout ignored: %v", got)
	}
}
