package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/autopod/autopod/cycle"
)

// ---- client ---------------------------------------------------------------

// updateStatus returns the update cycle's state, nil when the agent runs
// without one (no package manager it knows).
func (c *agentClient) updateStatus(ctx context.Context) (*cycle.Status, error) {
	var raw string
	if err := c.call(ctx, "UpdateStatusJSON").Store(&raw); err != nil {
		switch dbusErrorName(err) {
		case agentInterface + ".Error.NotSupported", "org.freedesktop.DBus.Error.UnknownMethod":
			return nil, nil // no cycle here, or an agent that predates it
		}
		return nil, err
	}
	var st cycle.Status
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return nil, fmt.Errorf("the agent's update status: %w", err)
	}
	return &st, nil
}

type checkResult struct {
	Updates        []cycle.Update `json:"updates"`
	RebootRequired bool           `json:"reboot_required"`
}

func (c *agentClient) checkUpdates(ctx context.Context) (checkResult, error) {
	var wire []struct{ Name, Version, Class string }
	var res checkResult
	if err := c.call(ctx, "CheckUpdates").Store(&wire, &res.RebootRequired); err != nil {
		return res, err
	}
	res.Updates = []cycle.Update{}
	for _, u := range wire {
		res.Updates = append(res.Updates, cycle.Update{Name: u.Name, Version: u.Version, Class: cycle.Class(u.Class)})
	}
	return res, nil
}

func (c *agentClient) startUpdate(ctx context.Context, dryRun, now bool) (cycle.Plan, error) {
	method := "StartUpdate"
	if now {
		method = "StartUpdateNow"
	}
	var raw string
	var plan cycle.Plan
	if err := c.call(ctx, method, dryRun).Store(&raw); err != nil {
		return plan, err
	}
	if err := json.Unmarshal([]byte(raw), &plan); err != nil {
		return plan, fmt.Errorf("the agent's plan: %w", err)
	}
	return plan, nil
}

// ---- the update command -------------------------------------------------

func runUpdate(ctx context.Context, c *agentClient, opts options, w io.Writer) error {
	switch {
	case opts.cancel:
		if opts.dryRun || opts.now || opts.check {
			return usagef("update --cancel takes no other option")
		}
		if err := c.call(ctx, "Cancel").Err; err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, map[string]bool{"cancelled": true})
		}
		_, err := fmt.Fprintln(w, "update cycle cancelled: the pods come back home and the lease is released")
		return err
	case opts.check:
		if opts.dryRun || opts.now {
			return usagef("update --check takes no other option")
		}
		res, err := c.checkUpdates(ctx)
		if err != nil {
			return err
		}
		if opts.json {
			return writeJSON(w, res)
		}
		return renderCheck(w, res)
	}
	plan, err := c.startUpdate(ctx, opts.dryRun, opts.now)
	if err != nil {
		return err
	}
	if opts.json {
		return writeJSON(w, plan)
	}
	if opts.dryRun {
		fmt.Fprintln(w, "dry run: nothing was done")
	} else {
		fmt.Fprintln(w, "update cycle started; 'autopodctl status' follows it")
	}
	return renderPlan(w, plan, time.Now())
}

// ---- rendering ------------------------------------------------------------

func renderCheck(w io.Writer, res checkResult) error {
	if len(res.Updates) == 0 {
		fmt.Fprintln(w, "no pending updates")
	} else {
		tw := newTable(w)
		fmt.Fprintln(tw, "PACKAGE\tVERSION\tCLASS")
		for _, u := range res.Updates {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", u.Name, cell(u.Version), u.Class)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "reboot required: %s\n", yesNo(res.RebootRequired))
	return err
}

func renderPlan(w io.Writer, p cycle.Plan, now time.Time) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "Updates:\t%s\n", updateList(p.Updates))
	fmt.Fprintf(tw, "Reboot required:\t%s\n", yesNo(p.RebootRequired))
	fmt.Fprintf(tw, "When:\t%s\n", when(p.When, p.WindowEnd, now))
	switch {
	case p.Local:
		fmt.Fprintf(tw, "Pods go to:\tthis host's disk (no peer takes them; checkpoint, reboot, restore)\n")
	case p.Peer != "":
		fmt.Fprintf(tw, "Pods go to:\t%s\n", p.Peer)
	default:
		fmt.Fprintf(tw, "Pods go to:\t-\n")
	}
	for _, m := range p.Moves {
		fmt.Fprintf(tw, "  %s\t→ %s\n", m.Pod, m.To)
	}
	for _, r := range p.Refusals {
		fmt.Fprintf(tw, "Refused by %s:\t%s\n", r.Peer, oneLine(r.Reason))
	}
	if p.RebootMethod != "" {
		fmt.Fprintf(tw, "Reboot:\t%s\n", p.RebootMethod)
	}
	for _, r := range p.Reasons {
		fmt.Fprintf(tw, "Why:\t%s\n", oneLine(r))
	}
	return tw.Flush()
}

// renderUpdateStatus is the update part of "autopodctl status".
func renderUpdateStatus(tw io.Writer, st *cycle.Status, now time.Time) {
	if st == nil {
		fmt.Fprintf(tw, "Update cycle:\toff (no apt or dnf on this host)\n")
		return
	}
	state := string(st.State)
	if !st.Since.IsZero() {
		state += " since " + st.Since.Local().Format("2006-01-02 15:04:05")
	}
	fmt.Fprintf(tw, "Update state:\t%s\n", state)
	if st.Reason != "" {
		fmt.Fprintf(tw, "Update reason:\t%s\n", oneLine(st.Reason))
	}
	fmt.Fprintf(tw, "Pending updates:\t%s\n", updateList(st.PendingUpdates))
	fmt.Fprintf(tw, "Reboot required:\t%s\n", yesNo(st.RebootRequired))
	fmt.Fprintf(tw, "Next window:\t%s\n", when(st.NextWindowStart, st.NextWindowEnd, now))
	lease := "not held"
	if st.LeaseHeld {
		lease = "held by this host"
	}
	fmt.Fprintf(tw, "Fleet lease:\t%s\n", lease)
	for _, b := range st.Blockers {
		fmt.Fprintf(tw, "Reboot blocked by:\t%s\n", oneLine(b.String()))
	}
	if st.LastError != "" {
		fmt.Fprintf(tw, "Last update error:\t%s\n", oneLine(st.LastError))
	}
}

func updateList(ups []cycle.Update) string {
	if len(ups) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(ups))
	for _, u := range ups {
		s := u.Name
		if u.Version != "" {
			s += " " + u.Version
		}
		if u.Class != "" && u.Class != cycle.ClassOther {
			s += " (" + string(u.Class) + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

func when(start, end, now time.Time) string {
	switch {
	case start.IsZero():
		return "any time (no maintenance window)"
	case !start.After(now) && (end.IsZero() || end.After(now)):
		if end.IsZero() {
			return "now"
		}
		return "now, in a window until " + end.Local().Format("2006-01-02 15:04 MST")
	}
	s := start.Local().Format("2006-01-02 15:04 MST")
	if !end.IsZero() {
		s += " until " + end.Local().Format("15:04")
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
