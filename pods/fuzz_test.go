package pods

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseSpec checks that ParseSpec never panics, that every error is a
// *SpecError (and ErrInvalid) naming the file and a line that exists, that
// errors are deterministic, and that every spec it accepts has its defaults
// applied and passes validation again.
func FuzzParseSpec(f *testing.F) {
	files, err := filepath.Glob(filepath.Join(specDir, "*.toml"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files: %v", err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(filepath.Base(file), data)
	}
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		file := "/etc/autopod/pods/" + name
		nlines := bytes.Count(data, []byte("\n")) + 1

		for k, l := range scanKeyLines(data) {
			if l < 1 || l > nlines {
				t.Fatalf("scanKeyLines: %q at line %d of %d", k, l, nlines)
			}
		}

		s, err := ParseSpec(file, data)
		if err != nil {
			se, ok := err.(*SpecError)
			if !ok {
				t.Fatalf("error %T is not a *SpecError: %v", err, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error is not ErrInvalid: %v", err)
			}
			if se.File != file {
				t.Fatalf("error names file %q, want %q", se.File, file)
			}
			if se.Line < 0 || se.Line > nlines {
				t.Fatalf("error at line %d of %d: %v", se.Line, nlines, err)
			}
			if se.Msg == "" {
				t.Fatalf("error without a message: %v", err)
			}
			if _, err2 := ParseSpec(file, data); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("not deterministic: %v, then %v", err, err2)
			}
			return
		}

		if err := validateSpec(&s); err != nil {
			t.Fatalf("accepted spec does not validate: %v\n%+v", err, s)
		}
		if s.File != file || s.Name == "" || s.Root.Mode == "" || s.Restart == "" || s.WorkDir == "" || s.Hostname == "" {
			t.Fatalf("defaults missing: %+v", s)
		}
		if s.Network.Address.IsValid() && !s.Network.Gateway.IsValid() {
			t.Fatalf("network defaults missing: %+v", s.Network)
		}
		if s.Limits.Memory != "" {
			if n, err := ParseSize(s.Limits.Memory); err != nil || n != s.Limits.MemoryBytes {
				t.Fatalf("memory %q parsed as %d (%v), MemoryBytes %d", s.Limits.Memory, n, err, s.Limits.MemoryBytes)
			}
		}
	})
}

// FuzzParseSize checks ParseSize against a few invariants.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "512M", "1.5G", "64MiB", "2gb", "1T", "9223372036854775807", "1.1K", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if n != 0 {
				t.Fatalf("ParseSize(%q) = %d with error %v", s, n, err)
			}
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
	})
}
