package cycle

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Window is one maintenance window: it opens at Start (wall clock in
// TimeZone) on each of Days and lasts Length of real time, so a window may
// run past midnight (Days name the day it opens) and a 3h window is 3h long
// even across a DST change.
type Window struct {
	// Days: "mon" … "sun" (or the full names), "daily", "weekdays",
	// "weekends"; case does not matter.
	Days []string `toml:"days"`
	// Start is "HH:MM", 24-hour. A start the clocks skip that day (a DST
	// jump forward) opens the window at the jump; a start the clocks pass
	// twice (a jump back) opens it at the first pass.
	Start string `toml:"start"`
	// Length, e.g. "3h", from 1 minute to 7 days.
	Length time.Duration `toml:"length"`
	// TimeZone is an IANA name such as "Europe/Berlin"; "" or "local"
	// means the host's zone, "UTC" UTC.
	TimeZone string `toml:"time_zone"`
}

// window is a Window checked and parsed.
type window struct {
	days         [7]bool // by time.Weekday
	hour, minute int
	length       time.Duration
	loc          *time.Location
}

var dayNames = map[string][]time.Weekday{
	"daily":    {time.Sunday, time.Monday, time.Tuesday, time.Wednesday, time.Thursday, time.Friday, time.Saturday},
	"weekdays": {time.Monday, time.Tuesday, time.Wednesday, time.Thursday, time.Friday},
	"weekends": {time.Saturday, time.Sunday},
}

func init() {
	for d := time.Sunday; d <= time.Saturday; d++ {
		full := strings.ToLower(d.String())
		dayNames[full] = []time.Weekday{d}
		dayNames[full[:3]] = []time.Weekday{d}
	}
}

func (w Window) compile() (window, *PolicyError) {
	var c window
	if len(w.Days) == 0 {
		return c, &PolicyError{Key: "days", Msg: `is required: day names ("mon" … "sun"), "daily", "weekdays" or "weekends"`}
	}
	for _, d := range w.Days {
		wds, ok := dayNames[strings.ToLower(strings.TrimSpace(d))]
		if !ok {
			return c, &PolicyError{Key: "days", Msg: fmt.Sprintf(`unknown day %q: use "mon" … "sun", "daily", "weekdays" or "weekends"`, d)}
		}
		for _, wd := range wds {
			c.days[wd] = true
		}
	}
	hh, mm, ok := strings.Cut(w.Start, ":")
	h, herr := strconv.Atoi(hh)
	m, merr := strconv.Atoi(mm)
	if !ok || herr != nil || merr != nil || len(mm) != 2 || len(hh) < 1 || len(hh) > 2 || h < 0 || h > 23 || m < 0 || m > 59 {
		return c, &PolicyError{Key: "start", Msg: fmt.Sprintf(`must be a time "HH:MM" from "00:00" to "23:59", got %q`, w.Start)}
	}
	c.hour, c.minute = h, m
	if w.Length < time.Minute || w.Length > 7*24*time.Hour {
		return c, &PolicyError{Key: "length", Msg: fmt.Sprintf(`must be a duration from 1m to 168h, such as "3h", got %s`, w.Length)}
	}
	c.length = w.Length
	switch tz := w.TimeZone; tz {
	case "", "local", "Local":
		c.loc = time.Local
	default:
		loc, err := time.LoadLocation(tz)
		if err != nil {
			return c, &PolicyError{Key: "time_zone", Msg: fmt.Sprintf("unknown time zone %q (an IANA name such as \"Europe/Berlin\", or \"local\"): %v", tz, err)}
		}
		c.loc = loc
	}
	return c, nil
}

func compileWindows(ws []Window) ([]window, error) {
	out := make([]window, 0, len(ws))
	for i, w := range ws {
		c, err := w.compile()
		if err != nil {
			err.Key = fmt.Sprintf("window[%d].%s", i, err.Key)
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// NextWindow returns the maintenance window that contains now, or else the
// next one to open: [start, end). With no windows configured it is always
// maintenance time: start is now and end is the zero time (no end). ok is
// false only when the windows are invalid (see Validate).
func (p Policy) NextWindow(now time.Time) (start, end time.Time, ok bool) {
	ws, err := compileWindows(p.Windows)
	if err != nil {
		return time.Time{}, time.Time{}, false
	}
	return nextWindow(ws, now)
}

func nextWindow(ws []window, now time.Time) (start, end time.Time, ok bool) {
	if len(ws) == 0 {
		return now, time.Time{}, true
	}
	for _, w := range ws {
		local := now.In(w.loc)
		// A window may open up to 7 days before now and still be open; the
		// next opening of any window is at most 7 days ahead.
		for off := -8; off <= 8; off++ {
			y, m, d := local.Date()
			day := time.Date(y, m, d+off, 12, 0, 0, 0, w.loc)
			if !w.days[day.Weekday()] {
				continue
			}
			s := wallTime(day.Year(), day.Month(), day.Day(), w.hour, w.minute, w.loc)
			e := s.Add(w.length)
			if !e.After(now) {
				continue
			}
			if !ok || better(s, e, start, end, now) {
				start, end, ok = s, e, true
			}
		}
	}
	return start, end, ok
}

// better reports whether window [s, e) is a better answer than [bs, be):
// an open window beats a later one; between open windows the one that stays
// open longer wins; between future ones the earlier, then the longer.
func better(s, e, bs, be, now time.Time) bool {
	open, bopen := !s.After(now), !bs.After(now)
	switch {
	case open && bopen:
		return e.After(be)
	case open != bopen:
		return open
	case !s.Equal(bs):
		return s.Before(bs)
	}
	return e.After(be)
}

// wallTime is the instant the wall clock in loc shows h:m on the given
// date. When the clocks skip h:m that day it is the instant of the jump;
// when they show h:m twice it is the first time. (time.Date leaves both
// cases unspecified, and Go's answer differs between zones.)
func wallTime(y int, mon time.Month, d, h, m int, loc *time.Location) time.Time {
	t := time.Date(y, mon, d, h, m, 0, 0, loc)
	want := time.Date(y, mon, d, h, m, 0, 0, time.UTC)
	got := time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), 0, 0, time.UTC)
	switch {
	case got.After(want): // normalised past the gap: the jump is where t's zone began
		s, _ := t.ZoneBounds()
		return s
	case got.Before(want): // normalised before the gap: the jump is where t's zone ends
		_, e := t.ZoneBounds()
		return e
	}
	// h:m exists; did it also exist in the zone before t's, just earlier?
	s, _ := t.ZoneBounds()
	if s.IsZero() {
		return t
	}
	_, off := t.Zone()
	_, prevOff := s.Add(-time.Nanosecond).Zone()
	if prevOff > off {
		if earlier := t.Add(-time.Duration(prevOff-off) * time.Second); earlier.Before(s) {
			return earlier
		}
	}
	return t
}
