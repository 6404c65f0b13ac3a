package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// writeJSON prints v as one indented JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeRawJSON re-indents JSON the agent produced without decoding it, so
// fields this autopodctl does not know about still reach the script.
func writeRawJSON(w io.Writer, raw string) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, []byte(raw), "", "  "); err != nil {
		return fmt.Errorf("agent sent malformed JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := buf.WriteTo(w)
	return err
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// renderPods prints the pods table; now anchors the relative ages.
func renderPods(w io.Writer, rows []podRow, now time.Time) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tSTATE\tPID\tADDRESS\tSINCE\tERROR")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n",
			cell(r.Name), cell(r.State), pidCell(r.Pid), cell(r.Address), relativeAge(r.Since, now), oneLine(r.Error))
	}
	return tw.Flush()
}

// renderPod prints one pod as "key: value" lines.
func renderPod(w io.Writer, p podInfo, now time.Time) error {
	since := "-"
	if !p.Since.IsZero() {
		since = fmt.Sprintf("%s (%s ago)", p.Since.Local().Format(time.RFC3339), relativeAge(p.Since, now))
	}
	tw := newTable(w)
	for _, kv := range [][2]string{
		{"Name", cell(p.Name)},
		{"State", cell(p.State)},
		{"PID", pidCell(p.Pid)},
		{"Address", cell(p.Address)},
		{"File", cell(p.File)},
		{"Since", since},
		{"Restarts", fmt.Sprint(p.Restarts)},
		{"Checkpoint", cell(p.Checkpoint)},
		{"Error", cell(oneLine(p.Error))},
		{"Location", p.Location}, // only for pods that were migrated
		{"Home", p.Home},
	} {
		if kv[1] == "" {
			continue
		}
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	return tw.Flush()
}

// renderStatus prints the agent's status, one item per line.
func renderStatus(w io.Writer, st agentStatus) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "Agent version:\t%s\n", cell(st.Version))
	fmt.Fprintf(tw, "CRIU path:\t%s\n", cell(st.Criu.Path))
	fmt.Fprintf(tw, "CRIU version:\t%s\n", cell(st.Criu.Version))
	fmt.Fprintf(tw, "CRIU features:\t%s\n", featureList(st.Criu.Features))
	if st.Criu.Error != "" {
		fmt.Fprintf(tw, "CRIU error:\t%s\n", oneLine(st.Criu.Error))
	}
	if len(st.Strategies) > 0 {
		fmt.Fprintf(tw, "Migration:\t%s\n", strategyList(st.Strategies))
		for _, s := range slices.Sorted(maps.Keys(st.Strategies)) {
			if why := st.Strategies[s]; why != "" {
				fmt.Fprintf(tw, "  %s:\t%s\n", s, oneLine(why))
			}
		}
	}
	fmt.Fprintf(tw, "Pods:\t%d\n", st.Pods)
	renderUpdateStatus(tw, st.Update, time.Now())
	return tw.Flush()
}

// strategyList names the strategies this host can run, then those it
// cannot ("unavailable"); the reasons follow on their own lines.
func strategyList(m map[string]string) string {
	var yes, no []string
	for _, s := range slices.Sorted(maps.Keys(m)) {
		if m[s] == "" {
			yes = append(yes, s)
		} else {
			no = append(no, s)
		}
	}
	out := strings.Join(yes, ", ")
	if out == "" {
		out = "none"
	}
	if len(no) > 0 {
		out += " (unavailable: " + strings.Join(no, ", ") + ")"
	}
	return out
}

// featureList puts the supported features first, so the line answers
// "what can this host do" before "what can it not".
func featureList(f map[string]bool) string {
	var yes, no []string
	for _, name := range slices.Sorted(maps.Keys(f)) {
		if f[name] {
			yes = append(yes, name)
		} else {
			no = append(no, name)
		}
	}
	switch {
	case len(yes) == 0 && len(no) == 0:
		return "-"
	case len(no) == 0:
		return strings.Join(yes, ", ")
	case len(yes) == 0:
		return "none (unsupported: " + strings.Join(no, ", ") + ")"
	}
	return strings.Join(yes, ", ") + " (unsupported: " + strings.Join(no, ", ") + ")"
}

func renderCheckpoint(w io.Writer, r checkpointResult) error {
	suffix := ""
	if r.LeaveRunning {
		suffix = " (pod left running)"
	}
	_, err := fmt.Fprintf(w, "checkpointed %s: %s in %s%s\n", r.Name, humanBytes(r.Bytes), r.Dir, suffix)
	return err
}

// progressPrinter prints a line each time a migration (a pod and a peer)
// enters a phase; reports within a phase only update the byte count,
// which the next line shows.
type progressPrinter struct {
	w       io.Writer
	arrow   string               // "→" out to the peer, "←" home from it
	current map[[2]string]string // pod, peer → phase last printed
}

func newProgressPrinter(w io.Writer, incoming bool) *progressPrinter {
	arrow := "→"
	if incoming {
		arrow = "←"
	}
	return &progressPrinter{w: w, arrow: arrow, current: map[[2]string]string{}}
}

func (pp *progressPrinter) show(p migrationProgress) {
	key := [2]string{p.Pod, p.Peer}
	if pp.current[key] == p.Phase {
		return
	}
	pp.current[key] = p.Phase
	fmt.Fprintf(pp.w, "%s %s %s: %s %s\n", p.Pod, pp.arrow, p.Peer, p.Phase, humanBytes(p.Bytes))
}

func renderMigration(w io.Writer, r migrateResult) error {
	_, err := fmt.Fprintf(w, "migrated %s to %s: frozen %s, total %s, %s\n",
		r.Pod, r.Peer, humanDuration(r.FrozenUsec), humanDuration(r.TotalUsec), humanBytes(r.Bytes))
	return err
}

func renderEvacuation(w io.Writer, r evacuateResult) error {
	var err error
	if len(r.Migrated) == 0 {
		_, err = fmt.Fprintf(w, "evacuated no pods to %s: none is running\n", r.Peer)
	} else {
		_, err = fmt.Fprintf(w, "evacuated %s to %s: %s\n", podCount(len(r.Migrated)), r.Peer, strings.Join(r.Migrated, ", "))
	}
	return err
}

func renderReturn(w io.Writer, r returnResult) error {
	var err error
	if len(r.Returned) == 0 {
		_, err = fmt.Fprintln(w, "returned no pods: none runs on a peer")
	} else {
		_, err = fmt.Fprintf(w, "returned %s: %s\n", podCount(len(r.Returned)), strings.Join(r.Returned, ", "))
	}
	return err
}

func podCount(n int) string {
	if n == 1 {
		return "1 pod"
	}
	return fmt.Sprintf("%d pods", n)
}

// renderPeers prints the pinned peers table.
func renderPeers(w io.Writer, rows []peerRow) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tADDRESS\tFINGERPRINT")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", cell(r.Name), cell(r.Address), cell(r.Fingerprint))
	}
	return tw.Flush()
}

// humanDuration shows a duration in microseconds as people read pauses:
// "812 ms", "1.9 s", "2 min 5 s".
func humanDuration(usec uint64) string {
	d := time.Duration(min(usec, uint64(1<<63-1)/1000)) * time.Microsecond
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%d µs", usec)
	case d.Round(time.Millisecond) < time.Second:
		return fmt.Sprintf("%d ms", d.Round(time.Millisecond)/time.Millisecond)
	case d.Round(100*time.Millisecond) < time.Minute:
		return fmt.Sprintf("%.1f s", d.Round(100*time.Millisecond).Seconds())
	}
	d = d.Round(time.Second)
	return fmt.Sprintf("%d min %d s", d/time.Minute, (d%time.Minute)/time.Second)
}

// relativeAge is a short, coarse age ("45s", "12m", "3h", "2d"): enough to
// tell a pod that just restarted from one that has run for days.
func relativeAge(since, now time.Time) string {
	if since.IsZero() {
		return "-"
	}
	d := max(now.Sub(since), 0) // a clock step must not show "-3s"
	switch {
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// cell shows an absent value as "-" so that every column has a word and
// `awk '{print $3}'` keeps working.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func pidCell(pid int32) string {
	if pid <= 0 {
		return "-"
	}
	return fmt.Sprint(pid)
}

// oneLine keeps multi-line errors (CRIU logs) from breaking the table.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
