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
		// Help in all its spellings.
		{[]string{"--help"}, options{help: true}},
		{[]string{"-h"}, options{help: true}},
		{[]string{"help"}, options{help: true}},
		{[]string{"help", "checkpoint"}, options{help: true, command: "checkpoint"}},
		{[]string{"help", "list"}, options{help: true, command: "pods"}},
		{[]string{"checkpoint", "--help"}, options{help: true, command: "checkpoint"}},
		{[]string{"start", "-h"}, options{help: true, command: "start"}},
	}
	for _, c := range cases {
		got, err := parseArgs(c.args)
		if err != nil {
			t.Errorf("parseArgs(%q): %v", c.args, err)
			continue
		}
		if got.command != c.want.command || !slices.Equal(got.args, c.want.args) || got.json != c.want.json ||
			got.timeout != c.want.timeout || got.bus != c.want.bus || got.leaveRunning != c.want.leaveRunning ||
			got.help != c.want.help {
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
	} {
		if got := commandTimeout(options{command: cmd}); got != want {
			t.Errorf("%s: %v, want %v", cmd, got, want)
		}
	}
	if got := commandTimeout(options{command: "checkpoint", timeout: time.Hour}); got != time.Hour {
		t.Errorf("--timeout ignored: %v", got)
	}
}
