package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
)

// The agent's D-Bus names (agent.DBusName and friends). autopodctl does not
// import the agent package, which would link the whole daemon into the
// client; bus_test.go checks that the two agree.
const (
	agentBusName   = "org.autopod.Agent1"
	agentPath      = dbus.ObjectPath("/org/autopod/Agent1")
	agentInterface = "org.autopod.Agent1"
)

// unreachableError means no agent answered: the bus is down, or nothing
// owns the agent's name and activation could not start it (exit status 3).
type unreachableError struct {
	addr string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach the autopod agent on the bus at %s: %v", e.addr, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// agentClient makes the agent's D-Bus calls and turns their replies into
// plain Go values, so that nothing past this file sees a dbus.Variant.
type agentClient struct {
	addr string
	conn *dbus.Conn
	obj  dbus.BusObject
}

// dialAgent connects to the bus at addr. ctx bounds the connection's whole
// life: when it ends, godbus closes the connection and any call in flight
// returns.
func dialAgent(ctx context.Context, addr string) (*agentClient, error) {
	conn, err := dbus.Connect(addr, dbus.WithContext(ctx))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to the bus at %s: %w", addr, ctx.Err())
		}
		return nil, &unreachableError{addr: addr, err: fmt.Errorf("cannot connect to the bus: %w", err)}
	}
	return &agentClient{addr: addr, conn: conn, obj: conn.Object(agentBusName, agentPath)}, nil
}

func (c *agentClient) Close() error { return c.conn.Close() }

// call invokes an org.autopod.Agent1 method and classifies its failure.
func (c *agentClient) call(ctx context.Context, method string, args ...any) *dbus.Call {
	call := c.obj.CallWithContext(ctx, agentInterface+"."+method, 0, args...)
	call.Err = c.classify(ctx, call.Err)
	return call
}

// classify wraps errors that mean "no agent" in unreachableError and
// replaces godbus's view of an expired deadline with the context's error.
func (c *agentClient) classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	name := dbusErrorName(err)
	switch {
	case name == "org.freedesktop.DBus.Error.ServiceUnknown",
		name == "org.freedesktop.DBus.Error.NameHasNoOwner",
		name == "org.freedesktop.DBus.Error.NoReply", // the agent vanished mid-call
		name == "org.freedesktop.DBus.Error.Disconnected",
		strings.HasPrefix(name, "org.freedesktop.DBus.Error.Spawn."), // activation failed
		strings.HasPrefix(name, "org.freedesktop.systemd1."),         // activation through systemd failed
		errors.Is(err, dbus.ErrClosed):
		return &unreachableError{addr: c.addr, err: err}
	}
	return err
}

// dbusErrorName returns the D-Bus error name inside err, or "".
func dbusErrorName(err error) string {
	var v dbus.Error
	if errors.As(err, &v) {
		return v.Name
	}
	var p *dbus.Error
	if errors.As(err, &p) && p != nil {
		return p.Name
	}
	return ""
}

// agentStatus is the reply of Status, shaped for --json.
type agentStatus struct {
	Version string   `json:"version"`
	Criu    criuInfo `json:"criu"`
	Pods    uint32   `json:"pods"`
}

type criuInfo struct {
	Path     string          `json:"path"`
	Version  string          `json:"version"`
	Features map[string]bool `json:"features"`
	Error    string          `json:"error,omitempty"`
}

func (c *agentClient) status(ctx context.Context) (agentStatus, error) {
	var m map[string]dbus.Variant
	if err := c.call(ctx, "Status").Store(&m); err != nil {
		return agentStatus{}, err
	}
	st := agentStatus{
		Version: variantString(m, "version"),
		Criu: criuInfo{
			Path:     variantString(m, "criu_path"),
			Version:  variantString(m, "criu_version"),
			Features: map[string]bool{},
			Error:    variantString(m, "criu_error"),
		},
	}
	if f, ok := m["criu_features"].Value().(map[string]bool); ok {
		st.Criu.Features = f
	}
	if n, ok := m["pods"].Value().(uint32); ok {
		st.Pods = n
	}
	return st, nil
}

func (c *agentClient) version(ctx context.Context) (string, error) {
	var v dbus.Variant
	err := c.obj.CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, agentInterface, "Version").Store(&v)
	if err = c.classify(ctx, err); err != nil {
		return "", err
	}
	s, _ := v.Value().(string)
	return s, nil
}

// podRow is one line of ListPods.
type podRow struct {
	Name    string
	State   string
	Pid     int32
	Address string
	Since   time.Time // zero if unknown
	Error   string
}

func (c *agentClient) listPods(ctx context.Context) ([]podRow, error) {
	// Field order is the wire signature (ssisss).
	var wire []struct {
		Name, State string
		Pid         int32
		Address     string
		Since       string
		Error       string
	}
	if err := c.call(ctx, "ListPods").Store(&wire); err != nil {
		return nil, err
	}
	rows := make([]podRow, 0, len(wire))
	for _, w := range wire {
		rows = append(rows, podRow{
			Name: w.Name, State: w.State, Pid: w.Pid, Address: w.Address,
			Since: parseSince(w.Since), Error: w.Error,
		})
	}
	return rows, nil
}

func (c *agentClient) listPodsJSON(ctx context.Context) (string, error) {
	var s string
	err := c.call(ctx, "ListPodsJSON").Store(&s)
	return s, err
}

// podInfo is the reply of GetPod.
type podInfo struct {
	Name       string
	State      string
	Pid        int32
	Address    string
	File       string
	Since      time.Time
	Restarts   int32
	Checkpoint string
	Error      string
}

func (c *agentClient) getPod(ctx context.Context, name string) (podInfo, error) {
	var m map[string]dbus.Variant
	if err := c.call(ctx, "GetPod", name).Store(&m); err != nil {
		return podInfo{}, err
	}
	return podInfo{
		Name:       variantString(m, "name"),
		State:      variantString(m, "state"),
		Pid:        variantInt32(m, "pid"),
		Address:    variantString(m, "address"),
		File:       variantString(m, "file"),
		Since:      parseSince(variantString(m, "since")),
		Restarts:   variantInt32(m, "restarts"),
		Checkpoint: variantString(m, "checkpoint"),
		Error:      variantString(m, "error"),
	}, nil
}

func (c *agentClient) getPodJSON(ctx context.Context, name string) (string, error) {
	var s string
	err := c.call(ctx, "GetPodJSON", name).Store(&s)
	return s, err
}

// checkpointResult is what the checkpoint command reports; also its
// --json document.
type checkpointResult struct {
	Name         string `json:"name"`
	Dir          string `json:"dir"`
	Bytes        uint64 `json:"bytes"`
	LeaveRunning bool   `json:"leave_running"`
}

func (c *agentClient) checkpoint(ctx context.Context, name string, leaveRunning bool) (checkpointResult, error) {
	res := checkpointResult{Name: name, LeaveRunning: leaveRunning}
	err := c.call(ctx, "Checkpoint", name, leaveRunning).Store(&res.Dir, &res.Bytes)
	return res, err
}

// action runs one of the argument-only mutators: StartPod, StopPod, Restore.
func (c *agentClient) action(ctx context.Context, method, name string) error {
	return c.call(ctx, method, name).Err
}

// variantString and variantInt32 read an a{sv} entry, tolerating absent
// keys so that an older or newer agent degrades to empty fields.
func variantString(m map[string]dbus.Variant, key string) string {
	s, _ := m[key].Value().(string)
	return s
}

func variantInt32(m map[string]dbus.Variant, key string) int32 {
	n, _ := m[key].Value().(int32)
	return n
}

func parseSince(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}
	}
	return t
}
