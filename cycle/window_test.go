package cycle

import (
	"testing"
	"time"
)

func TestNextWindow(t *testing.T) {
	utc := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	daily := func(start string, length time.Duration, tz string) []Window {
		return []Window{{Days: []string{"daily"}, Start: start, Length: length, TimeZone: tz}}
	}
	for _, tc := range []struct {
		name       string
		windows    []Window
		now        string
		start, end string // "" end: no end
		notOK      bool
	}{
		{name: "no windows: always", now: "2025-03-04T10:00:00Z", start: "2025-03-04T10:00:00Z"},
		{name: "later today", windows: daily("12:00", time.Hour, "UTC"), now: "2025-03-04T10:00:00Z",
			start: "2025-03-04T12:00:00Z", end: "2025-03-04T13:00:00Z"},
		{name: "tomorrow", windows: daily("02:00", 3*time.Hour, "UTC"), now: "2025-03-04T10:00:00Z",
			start: "2025-03-05T02:00:00Z", end: "2025-03-05T05:00:00Z"},
		{name: "open now", windows: daily("02:00", 3*time.Hour, "UTC"), now: "2025-03-04T03:00:00Z",
			start: "2025-03-04T02:00:00Z", end: "2025-03-04T05:00:00Z"},
		{name: "opens exactly now", windows: daily("02:00", 3*time.Hour, "UTC"), now: "2025-03-04T02:00:00Z",
			start: "2025-03-04T02:00:00Z", end: "2025-03-04T05:00:00Z"},
		{name: "end is exclusive", windows: daily("02:00", 3*time.Hour, "UTC"), now: "2025-03-04T05:00:00Z",
			start: "2025-03-05T02:00:00Z", end: "2025-03-05T05:00:00Z"},
		{name: "crosses midnight, open after midnight",
			windows: []Window{{Days: []string{"sat"}, Start: "23:00", Length: 3 * time.Hour, TimeZone: "UTC"}},
			now:     "2025-03-09T01:00:00Z", // Sunday
			start:   "2025-03-08T23:00:00Z", end: "2025-03-09T02:00:00Z"},
		{name: "crosses midnight, just closed",
			windows: []Window{{Days: []string{"Saturday"}, Start: "23:00", Length: 3 * time.Hour, TimeZone: "UTC"}},
			now:     "2025-03-09T02:00:00Z",
			start:   "2025-03-15T23:00:00Z", end: "2025-03-16T02:00:00Z"},
		{name: "weekdays skip the weekend",
			windows: []Window{{Days: []string{"weekdays"}, Start: "01:00", Length: time.Hour, TimeZone: "UTC"}},
			now:     "2025-03-07T12:00:00Z", // Friday
			start:   "2025-03-10T01:00:00Z", end: "2025-03-10T02:00:00Z"},
		{name: "weekends",
			windows: []Window{{Days: []string{"WEEKENDS"}, Start: "01:00", Length: time.Hour, TimeZone: "UTC"}},
			now:     "2025-03-04T12:00:00Z", // Tuesday
			start:   "2025-03-08T01:00:00Z", end: "2025-03-08T02:00:00Z"},
		{name: "time zone",
			windows: daily("02:00", time.Hour, "Asia/Tokyo"), now: "2025-03-04T10:00:00Z",
			start: "2025-03-04T17:00:00Z", end: "2025-03-04T18:00:00Z"},
		{name: "the earliest of several",
			windows: []Window{
				{Days: []string{"sun"}, Start: "01:00", Length: time.Hour, TimeZone: "UTC"},
				{Days: []string{"wed"}, Start: "22:00", Length: time.Hour, TimeZone: "UTC"},
			},
			now: "2025-03-04T10:00:00Z", start: "2025-03-05T22:00:00Z", end: "2025-03-05T23:00:00Z"},
		{name: "overlapping open windows: the one open longer",
			windows: []Window{
				{Days: []string{"daily"}, Start: "01:00", Length: 2 * time.Hour, TimeZone: "UTC"},
				{Days: []string{"daily"}, Start: "02:00", Length: 4 * time.Hour, TimeZone: "UTC"},
			},
			now: "2025-03-04T02:30:00Z", start: "2025-03-04T02:00:00Z", end: "2025-03-04T06:00:00Z"},
		{name: "a week long window opened six days ago",
			windows: []Window{{Days: []string{"mon"}, Start: "00:00", Length: 168 * time.Hour, TimeZone: "UTC"}},
			now:     "2025-03-09T23:00:00Z", // Sunday
			start:   "2025-03-03T00:00:00Z", end: "2025-03-10T00:00:00Z"},
		// DST, Europe/Berlin: 2025-03-30 02:00 CET → 03:00 CEST; 2025-10-26 03:00 CEST → 02:00 CET.
		{name: "DST gap: start skipped, opens at the jump", windows: daily("02:30", time.Hour, "Europe/Berlin"),
			now: "2025-03-30T00:00:00Z", start: "2025-03-30T01:00:00Z", end: "2025-03-30T02:00:00Z"},
		{name: "DST gap: the day after is normal", windows: daily("02:30", time.Hour, "Europe/Berlin"),
			now: "2025-03-30T03:00:00Z", start: "2025-03-31T00:30:00Z", end: "2025-03-31T01:30:00Z"},
		{name: "DST fold: first 02:30", windows: daily("02:30", time.Hour, "Europe/Berlin"),
			now: "2025-10-25T23:00:00Z", start: "2025-10-26T00:30:00Z", end: "2025-10-26T01:30:00Z"},
		{name: "DST: length is real time across the jump", windows: daily("23:00", 4*time.Hour, "Europe/Berlin"),
			now: "2025-03-29T21:00:00Z", start: "2025-03-29T22:00:00Z", end: "2025-03-30T02:00:00Z"},
		{name: "DST before the change, winter offset", windows: daily("02:30", time.Hour, "Europe/Berlin"),
			now: "2025-03-28T12:00:00Z", start: "2025-03-29T01:30:00Z", end: "2025-03-29T02:30:00Z"},
		// America/New_York: Go normalises gaps and folds the other way round.
		{name: "DST gap New York", windows: daily("02:30", time.Hour, "America/New_York"),
			now: "2025-03-09T05:00:00Z", start: "2025-03-09T07:00:00Z", end: "2025-03-09T08:00:00Z"},
		{name: "DST fold New York: first 01:30", windows: daily("01:30", time.Hour, "America/New_York"),
			now: "2025-11-02T04:00:00Z", start: "2025-11-02T05:30:00Z", end: "2025-11-02T06:30:00Z"},
		{name: "invalid windows", windows: daily("25:00", time.Hour, "UTC"), now: "2025-03-04T10:00:00Z", notOK: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start, end, ok := Policy{Windows: tc.windows}.NextWindow(utc(tc.now))
			if tc.notOK {
				if ok {
					t.Fatalf("ok for invalid windows")
				}
				return
			}
			if !ok {
				t.Fatal("not ok")
			}
			var wantEnd time.Time
			if tc.end != "" {
				wantEnd = utc(tc.end)
			}
			if !start.Equal(utc(tc.start)) || !end.Equal(wantEnd) {
				t.Errorf("got %v – %v\nwant %v – %v", start.UTC(), end.UTC(), utc(tc.start), wantEnd)
			}
		})
	}
}

func TestWallTimeEveryDayOfAYear(t *testing.T) {
	// Across a whole year in zones with DST, every window start shows the
	// requested wall clock, or is a DST jump instant when the clock skips it.
	for _, tz := range []string{"Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"} {
		loc, err := time.LoadLocation(tz)
		if err != nil {
			t.Fatal(err)
		}
		for d := 0; d < 366; d++ {
			for _, hm := range [][2]int{{0, 0}, {1, 30}, {2, 0}, {2, 30}, {3, 0}, {23, 59}} {
				s := wallTime(2024, 1, 1+d, hm[0], hm[1], loc)
				l := s.In(loc)
				want := time.Date(2024, 1, 1+d, 0, 0, 0, 0, time.UTC)
				if l.Year() != want.Year() || l.YearDay() != want.YearDay() {
					t.Fatalf("%s day %d %02d:%02d: got %v on another day", tz, d, hm[0], hm[1], l)
				}
				if l.Hour() == hm[0] && l.Minute() == hm[1] {
					// The first such instant: half an hour or an hour earlier
					// must not show the same wall clock.
					for _, back := range []time.Duration{30 * time.Minute, time.Hour} {
						if e := s.Add(-back).In(loc); e.Hour() == hm[0] && e.Minute() == hm[1] && e.YearDay() == l.YearDay() {
							t.Errorf("%s %v: not the first %02d:%02d (also at %v)", tz, l, hm[0], hm[1], e)
						}
					}
					continue
				}
				// Skipped: s must be a zone change.
				if zs, _ := s.ZoneBounds(); !zs.Equal(s) {
					t.Errorf("%s day %d %02d:%02d: got %v, neither the time nor a DST jump", tz, d, hm[0], hm[1], l)
				}
			}
		}
	}
}
