package hooks

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// AptHook is what apt wrote on the stdin of a DPkg::Pre-Install-Pkgs command.
type AptHook struct {
	// Version of the protocol: 1 (the .deb files only), 2 or 3.
	Version int
	// Config is apt's configuration (versions 2 and 3), in apt's order, decoded.
	// A list is one item per element, with the key ending in "::".
	Config []ConfigItem
	// Packages are dpkg's steps, in the order dpkg takes them.
	Packages []Package
}

// ConfigItem is one line of apt's configuration dump.
type ConfigItem struct{ Key, Value string }

// MaxAptHookLine bounds one line of the hook's input (a configuration value or a
// package line); apt's own are far shorter.
const MaxAptHookLine = 1 << 20

// ParseAptHook reads the DPkg::Pre-Install-Pkgs protocol (apt.conf(5)), in any
// version apt sends: version 1 (one .deb path a line), or a "VERSION 2" or
// "VERSION 3" line, the configuration (key=value, %-encoded) up to an empty line,
// and one line per dpkg step:
//
//	v2: NAME OLDVER DIR NEWVER ACTION
//	v3: NAME OLDVER OLDARCH OLDMA DIR NEWVER NEWARCH NEWMA ACTION
//
// where a version or arch is "-" for none, DIR is "<", ">" or "=", and ACTION is
// "**CONFIGURE**", "**REMOVE**" or the path of the .deb being unpacked (the last
// field, which may contain spaces). Any line it cannot read is an error wrapping
// ErrUnparsable, and so is input that ends inside the configuration.
func ParseAptHook(r io.Reader) (*AptHook, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	n := 0
	next := func() (string, bool, error) {
		line, err := readLine(br)
		if err == io.EOF {
			return "", false, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("line %d: %w", n+1, err)
		}
		n++
		return line, true, nil
	}
	first, ok, err := next()
	if err != nil {
		return nil, err
	}
	h := &AptHook{Version: 1}
	if !ok {
		return h, nil
	}
	if !strings.HasPrefix(first, "VERSION ") {
		// Version 1: the first line is already a .deb.
		for ok {
			if first != "" {
				p, err := aptV1Line(first)
				if err != nil {
					return nil, unparsable(n, first, err.Error())
				}
				h.Packages = append(h.Packages, p)
			}
			if first, ok, err = next(); err != nil {
				return nil, err
			}
		}
		return h, nil
	}
	v, err := strconv.Atoi(strings.TrimPrefix(first, "VERSION "))
	if err != nil || (v != 2 && v != 3) {
		return nil, unparsable(n, first, "want VERSION 2 or VERSION 3")
	}
	h.Version = v
	for {
		line, ok, err := next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%w: the input ends inside apt's configuration (no empty line after it)", ErrUnparsable)
		}
		if line == "" {
			break
		}
		k, val, found := strings.Cut(line, "=")
		if !found || k == "" {
			return nil, unparsable(n, line, "want key=value in apt's configuration")
		}
		if k, err = percentDecode(k); err != nil {
			return nil, unparsable(n, line, err.Error())
		}
		if val, err = percentDecode(val); err != nil {
			return nil, unparsable(n, line, err.Error())
		}
		h.Config = append(h.Config, ConfigItem{k, val})
	}
	for {
		line, ok, err := next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return h, nil
		}
		if line == "" {
			continue
		}
		p, err := aptPackageLine(v, line)
		if err != nil {
			return nil, unparsable(n, line, err.Error())
		}
		h.Packages = append(h.Packages, p)
	}
}

// readLine returns the next line without its "\n"; io.EOF only when there is none.
func readLine(br *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		if err != nil {
			if err == io.EOF && b != nil {
				return string(b), nil
			}
			return "", err
		}
		b = append(b, chunk...)
		if len(b) > MaxAptHookLine {
			return "", fmt.Errorf("%w: a line longer than %d bytes", ErrUnparsable, MaxAptHookLine)
		}
		if !isPrefix {
			if b == nil {
				b = []byte{}
			}
			return string(b), nil
		}
	}
}

func aptPackageLine(version int, line string) (Package, error) {
	nf := 5
	if version == 3 {
		nf = 9
	}
	f := strings.SplitN(line, " ", nf)
	if len(f) != nf {
		return Package{}, fmt.Errorf("want %d fields", nf)
	}
	for _, s := range f[:nf-1] {
		if !isToken(s) {
			return Package{}, errors.New("an empty or malformed field")
		}
	}
	p := Package{Name: f[0]}
	if strings.Contains(p.Name, ":") {
		return Package{}, errors.New("a package name with an architecture qualifier")
	}
	var dir, action string
	old, nw := f[1], f[3]
	if version == 3 {
		// NAME OLDVER OLDARCH OLDMA DIR NEWVER NEWARCH NEWMA ACTION
		old, dir, nw, action = f[1], f[4], f[5], f[8]
		oldArch, newArch := f[2], f[6]
		if (old == "-") != (oldArch == "-") || (nw == "-") != (newArch == "-") {
			return Package{}, errors.New("a version without an architecture, or the reverse")
		}
		switch {
		case newArch != "-":
			p.Arch = newArch
		case oldArch != "-":
			p.Arch = oldArch
		}
	} else {
		dir, action = f[2], f[4]
	}
	if old != "-" {
		p.OldVersion = old
	}
	if nw != "-" {
		p.NewVersion = nw
	}
	if dir != "<" && dir != ">" && dir != "=" {
		return Package{}, fmt.Errorf("direction %q is not <, > or =", dir)
	}
	switch {
	case action == "**CONFIGURE**":
		p.Action = ActionConfigure
	case action == "**REMOVE**":
		p.Action = ActionRemove
	case len(action) > 4 && strings.HasPrefix(action, "**") && strings.HasSuffix(action, "**"):
		// An action a later apt may add: kept, never taken for an unpack.
		w := strings.ToLower(action[2 : len(action)-2])
		if !isToken(w) {
			return Package{}, fmt.Errorf("action %q", action)
		}
		p.Action = w
	case action == "" || strings.ContainsAny(action, "\x00\r"):
		return Package{}, errors.New("no action or .deb file")
	default:
		if p.NewVersion == "" {
			return Package{}, errors.New("a .deb to unpack without a new version")
		}
		p.File = action
		switch {
		case p.OldVersion == "":
			p.Action = ActionInstall
		case dir == "<":
			p.Action = ActionUpgrade
		case dir == ">":
			p.Action = ActionDowngrade
		default:
			p.Action = ActionReinstall
		}
	}
	return p, nil
}

// aptV1Line reads a version 1 line, the path of a .deb, whose name says the
// package: NAME_VERSION_ARCH.deb, the epoch's colon written as %3a in apt's cache.
func aptV1Line(line string) (Package, error) {
	base := path.Base(line)
	if !strings.HasSuffix(base, ".deb") {
		return Package{}, errors.New("not a .deb file")
	}
	f := strings.Split(strings.TrimSuffix(base, ".deb"), "_")
	if len(f) != 3 {
		return Package{}, errors.New("the .deb's name is not NAME_VERSION_ARCH.deb")
	}
	version, err := percentDecode(f[1])
	if err != nil {
		return Package{}, err
	}
	p := Package{Name: f[0], NewVersion: version, Arch: f[2], Action: ActionUnpack, File: line}
	if !isToken(p.Name) || !isToken(p.NewVersion) || !isToken(p.Arch) || strings.Contains(p.Name, ":") {
		return Package{}, errors.New("the .deb's name is not NAME_VERSION_ARCH.deb")
	}
	return p, nil
}

// percentDecode undoes apt's %-encoding of the configuration dump (%XX, hex).
func percentDecode(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("a % without two hex digits")
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", errors.New("a % without two hex digits")
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// ConfigValue returns the value of apt's configuration key (compared as apt does,
// without case) and whether it is set; for a list, its last element.
func (h *AptHook) ConfigValue(key string) (string, bool) {
	for i := len(h.Config) - 1; i >= 0; i-- {
		k := strings.TrimSuffix(h.Config[i].Key, "::")
		if strings.EqualFold(k, key) {
			return h.Config[i].Value, true
		}
	}
	return "", false
}

// ConfigList returns the elements of apt's configuration list key, in order.
func (h *AptHook) ConfigList(key string) []string {
	var out []string
	for _, c := range h.Config {
		if k, ok := strings.CutSuffix(c.Key, "::"); ok && strings.EqualFold(k, key) {
			out = append(out, c.Value)
		}
	}
	return out
}

// CommandLine is the command that runs apt (CommandLine::AsString): "apt-get -y
// install hello", or "/usr/bin/unattended-upgrade" (which sets it too); empty if
// apt did not say.
func (h *AptHook) CommandLine() string {
	v, _ := h.ConfigValue("CommandLine::AsString")
	return v
}

// Frontend names the program running apt for messages: "apt-get",
// "unattended-upgrade", or "apt" when the command line is unknown.
func (h *AptHook) Frontend() string {
	f := strings.Fields(h.CommandLine())
	if len(f) == 0 {
		return "apt"
	}
	return path.Base(f[0])
}

// TargetRoot is the root directory dpkg installs into: the last --root or
// --instdir in DPkg::Options, below DPkg::Chroot-Directory when that is set; "/"
// when neither is. Image builders use them; an install into another root does not
// concern this host's pods.
func (h *AptHook) TargetRoot() string {
	chroot, _ := h.ConfigValue("DPkg::Chroot-Directory")
	root := ""
	for _, o := range h.ConfigList("DPkg::Options") {
		for _, opt := range []string{"--root=", "--instdir="} {
			if v, ok := strings.CutPrefix(o, opt); ok && v != "" {
				root = v
			}
		}
	}
	return path.Clean(path.Join("/", chroot, root))
}
