package hooks

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// DpkgState is one package's entry in dpkg's status file (/var/lib/dpkg/status).
type DpkgState struct {
	Name, Arch, Version string
	// Want, Flag and Status are the three words of the Status field
	// ("install ok installed").
	Want, Flag, Status string
}

// Settled reports whether dpkg has finished with the package: installed, removed
// with its configuration kept (config-files) or not installed, and not marked as
// needing a reinstall. Anything else (half-installed, unpacked, half-configured,
// triggers-awaited, triggers-pending, reinstreq) is what a failed dpkg run leaves.
func (s DpkgState) Settled() bool {
	if s.Flag != "ok" {
		return false
	}
	switch s.Status {
	case "installed", "config-files", "not-installed":
		return true
	}
	return false
}

func (s DpkgState) String() string {
	return fmt.Sprintf("%s:%s %s (%s %s %s)", s.Name, s.Arch, s.Version, s.Want, s.Flag, s.Status)
}

// ParseDpkgStatus reads dpkg's status file: stanzas of "Field: value" lines
// separated by empty lines, continuation lines starting with a blank. Only Package,
// Architecture, Version and Status are kept. A stanza without Package or with a
// Status that is not three words is an error wrapping ErrUnparsable.
func ParseDpkgStatus(r io.Reader) ([]DpkgState, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var out []DpkgState
	var cur DpkgState
	started, status := false, false
	n, start := 0, 0
	flush := func() error {
		if !started {
			return nil
		}
		if cur.Name == "" {
			return fmt.Errorf("%w: the stanza at line %d has no Package field", ErrUnparsable, start)
		}
		if !status {
			return fmt.Errorf("%w: package %s (line %d) has no Status field", ErrUnparsable, cur.Name, start)
		}
		out = append(out, cur)
		cur, started, status = DpkgState{}, false, false
		return nil
	}
	for {
		line, err := readLine(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		n++
		if strings.TrimSpace(line) == "" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		if !started {
			started, start = true, n
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // a continuation of a field we do not keep
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || k == "" {
			return nil, unparsable(n, line, "want Field: value")
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(k) {
		case "package":
			if !isToken(v) {
				return nil, unparsable(n, line, "a malformed package name")
			}
			cur.Name = v
		case "architecture":
			cur.Arch = v
		case "version":
			cur.Version = v
		case "status":
			f := strings.Fields(v)
			if len(f) != 3 {
				return nil, unparsable(n, line, "want Status: WANT FLAG STATUS")
			}
			cur.Want, cur.Flag, cur.Status = f[0], f[1], f[2]
			status = true
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// Unsettled returns the entries dpkg has not finished with (Settled is false).
func Unsettled(states []DpkgState) []DpkgState {
	var out []DpkgState
	for _, s := range states {
		if !s.Settled() {
			out = append(out, s)
		}
	}
	return out
}
