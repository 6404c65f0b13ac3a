package benchkit

import (
	"math"
	"os"
	"strings"
	"testing"
)

func TestTableMarkdown(t *testing.T) {
	tb := &Table{
		Metrics: []Metric{
			{Key: "t", Label: "time, s", Unit: "s", Ratio: true},
			{Key: "b", Label: "bytes, MB", Unit: "MB", Ratio: true},
			{Key: "n", Label: "reconnects"},
			{Key: "w", Label: "write-back, s", Unit: "s", Ratio: true},
		},
		Columns: []Column{{Key: "a", Label: "A"}, {Key: "r", Label: "R"}},
		Ratios:  [][2]string{{"a", "r"}},
	}
	for _, v := range []float64{3, 1, 2} {
		tb.Add("a", Sample{"t": v, "b": 110e6, "n": 0, "w": 0.5})
	}
	tb.Add("r", Sample{"t": 0.5, "b": 100e6, "w": 0.001})
	got := tb.Markdown()
	want := `| metric | A | R | A / R |
|---|---:|---:|---:|
| time, s | 2.00 (1.00–3.00) | 0.50 | 4.00× |
| bytes, MB | 110 | 100 | 1.10× |
| reconnects | 0 | – | – |
| write-back, s | 0.50 | 0.00 | – |
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestMedian(t *testing.T) {
	if m := Median([]float64{1, 2, 3, 10}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("median of nothing is not NaN")
	}
}

func TestParseSize(t *testing.T) {
	for in, mib := range map[string]int{"100M": 100, "1G": 1024, "2g": 2048, "20": 20} {
		s, err := ParseSize(in)
		if err != nil || s.MiB != mib {
			t.Errorf("ParseSize(%q) = %+v, %v; want %d MiB", in, s, err, mib)
		}
	}
	for _, in := range []string{"", "G", "-1M", "1T"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	if s, _ := ParseSize("1G"); s.String() != "1 GiB" {
		t.Errorf("1G prints as %q", s)
	}
}

func TestCRIULogSeconds(t *testing.T) {
	dir := t.TempDir()
	log := dir + "/x.log"
	if err := writeFile(log, "(00.000010) Version: 4.2.1\n(00.512000) Writing stats\n  continued\n(01.250000) Running post-resume scripts\n"); err != nil {
		t.Fatal(err)
	}
	if v, ok := CRIULogSeconds(log); !ok || v != 1.25 {
		t.Errorf("CRIULogSeconds = %v, %v", v, ok)
	}
	if _, ok := CRIULogSeconds(dir + "/missing"); ok {
		t.Error("missing log read")
	}
}

func TestEnvironment(t *testing.T) {
	e := Environment("CRIU 4.2.1")
	if !strings.HasPrefix(e, "Run ") || !strings.Contains(e, "; CRIU 4.2.1;") || !strings.Contains(e, "load average") {
		t.Errorf("Environment() = %q", e)
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		v    float64
		unit string
		want string
	}{{0.456, "s", "0.46"}, {12.34, "s", "12.3"}, {110e6, "MB", "110"}, {7.4, "%", "7 %"}, {0.5, "×", "0.50"}, {153.6, "ms", "154"}, {1648.2, "MB/s", "1648"}} {
		if got := Format(c.v, c.unit); got != c.want {
			t.Errorf("Format(%v, %q) = %q, want %q", c.v, c.unit, got, c.want)
		}
	}
}
