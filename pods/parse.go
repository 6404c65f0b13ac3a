package pods

import (
	"encoding"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// SpecError is the error for an invalid pod definition. It says where the
// problem is as precisely as it can: the file, the line (0 when unknown) and
// the TOML key ("network.address", "mount[1].target", `env."A=B"`; empty for
// problems with the file as a whole, such as its name).
//
// errors.Is(err, ErrInvalid) holds for every SpecError.
type SpecError struct {
	File  string
	Line  int
	Field string
	Msg   string
}

// Error formats the error as FILE:LINE: FIELD: MSG, leaving out ":LINE" when
// the line is unknown and "FIELD: " when there is no field.
func (e *SpecError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns ErrInvalid.
func (e *SpecError) Unwrap() error { return ErrInvalid }

// Limits and defaults applied by ParseSpec.
const (
	MinMemoryBytes = 4 << 20 // smallest accepted limits.memory
	MaxCPUWeight   = 10000   // cgroup v2 cpu.weight range is 1..10000
	MaxPids        = 1 << 22 // PID_MAX_LIMIT on 64-bit Linux; pids.max rejects more
	maxHostnameLen = 64      // the kernel's limit for a UTS nodename
)

var (
	podNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
	userNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]*$`)
)

// ParseSpec parses the pod definition in data, read from file. The pod's
// name is the base name of file without ".toml". Defaults are applied and the
// result is validated; every error is a *SpecError.
func ParseSpec(file string, data []byte) (Spec, error) {
	name := strings.TrimSuffix(filepath.Base(file), ".toml")
	if !podNameRE.MatchString(name) {
		return Spec{}, &SpecError{File: file, Msg: fmt.Sprintf(
			"invalid pod name %q (the file name without .toml): must be 1 to 63 characters a-z, 0-9, '_', '.', '-', starting with a letter or digit", name)}
	}

	// Pass 1: syntax, into a generic tree. The toml package reports
	// syntax errors as toml.ParseError with a position.
	var tree map[string]any
	if _, err := toml.Decode(string(data), &tree); err != nil {
		return Spec{}, tomlError(file, data, err)
	}
	lines := scanKeyLines(data)
	fail := func(errs []specFieldErr) error {
		if len(errs) == 0 {
			return nil
		}
		return firstError(file, lines, errs)
	}

	// Pass 2: unknown keys and types, checked against Spec by reflection.
	// Doing this ourselves (instead of relying on toml.Decode into Spec)
	// makes the result deterministic when there are several problems (the
	// toml package walks Go maps in random order) and gives every type
	// error a position and a full key (toml's are plain errors, and they
	// lack the index of an array-of-tables element).
	var errs []specFieldErr
	checkTOMLValue(nil, tree, specType, &errs)
	if err := fail(errs); err != nil {
		return Spec{}, err
	}

	// Pass 3: decode for real. After pass 2 this does not fail, but if it
	// does (or leaves keys undecoded) the error is still a SpecError.
	var s Spec
	md, err := toml.Decode(string(data), &s)
	if err != nil {
		return Spec{}, tomlError(file, data, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0].String()
		line := lines[k]
		if line == 0 {
			line = lines[lookupLoose(lines, k)]
		}
		return Spec{}, &SpecError{File: file, Line: line, Field: k, Msg: "unknown field"}
	}
	s.Name = name
	s.File = file

	// Pass 4: defaults and semantic checks.
	errs = applySpecDefaults(&s)
	errs = append(errs, explicitZeroErrs(tree)...)
	errs = append(errs, validateSpecAll(&s)...)
	if err := fail(errs); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// LoadDir parses every *.toml file in dir, in name order, skipping other
// files, hidden files and subdirectories. It returns the valid specs and one
// *SpecError per file that is invalid or cannot be read, so the caller can
// keep serving the valid pods. A missing dir is not an error; a dir that
// cannot be read gives a single error that is not a SpecError.
func LoadDir(dir string) (specs []Spec, errs []error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, []error{err}
	}
	for _, e := range entries { // os.ReadDir sorts by name
		n := e.Name()
		if !strings.HasSuffix(n, ".toml") || strings.HasPrefix(n, ".") {
			continue
		}
		p := filepath.Join(dir, n)
		if e.IsDir() {
			continue
		}
		if e.Type()&os.ModeSymlink != 0 {
			fi, err := os.Stat(p)
			if err != nil {
				errs = append(errs, specReadError(p, err))
				continue
			}
			if fi.IsDir() {
				continue
			}
		} else if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, specReadError(p, err))
			continue
		}
		s, err := ParseSpec(p, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		specs = append(specs, s)
	}
	return specs, errs
}

// specReadError reports a pod file that cannot be read as a SpecError, so that
// the pod shows up as invalid with the reason.
func specReadError(file string, err error) *SpecError {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return &SpecError{File: file, Msg: "cannot read: " + err.Error()}
}

// ParseSize parses a byte count: a decimal number with an optional fraction
// and an optional unit K, M, G or T (powers of 1024), case-insensitive,
// optionally followed by "B" or "iB": "1048576", "512M", "64MiB", "1.5G",
// "2gb". Fractional byte counts are rounded down.
func ParseSize(s string) (int64, error) {
	bad := func(why string) (int64, error) {
		return 0, fmt.Errorf("invalid size %q: %s", s, why)
	}
	t := strings.TrimSpace(s)
	if t == "" {
		return bad("empty")
	}
	if len(t) > 64 {
		return bad("too long")
	}
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return bad(`want a number with an optional unit, e.g. "512M" or "2G"`)
	}
	digits, frac := t[:i], ""
	if i < len(t) && t[i] == '.' {
		j := i + 1
		for j < len(t) && t[j] >= '0' && t[j] <= '9' {
			j++
		}
		if j == i+1 {
			return bad("missing digits after '.'")
		}
		frac, i = t[i+1:j], j
	}
	var shift uint
	switch strings.ToLower(strings.TrimLeft(t[i:], " \t")) {
	case "", "b":
	case "k", "kb", "kib":
		shift = 10
	case "m", "mb", "mib":
		shift = 20
	case "g", "gb", "gib":
		shift = 30
	case "t", "tb", "tib":
		shift = 40
	default:
		return bad("unknown unit (want K, M, G or T, optionally followed by B or iB)")
	}
	num, ok := new(big.Int).SetString(digits+frac, 10)
	if !ok {
		return bad("not a number")
	}
	num.Lsh(num, shift)
	den := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(frac))), nil)
	num.Quo(num, den)
	if !num.IsInt64() {
		return bad("too large")
	}
	return num.Int64(), nil
}

// specFieldErr is a semantic or type error before it gets its file and line.
type specFieldErr struct {
	path fieldPath
	msg  string
}

func fieldErrf(p fieldPath, format string, args ...any) specFieldErr {
	return specFieldErr{path: p, msg: fmt.Sprintf(format, args...)}
}

// firstError turns the error that comes first in the file into a SpecError.
// Errors without a line (such as a missing key) concern the whole file and
// come first; ties keep their order.
func firstError(file string, lines map[string]int, errs []specFieldErr) error {
	type located struct {
		line int
		e    specFieldErr
	}
	ls := make([]located, len(errs))
	for i, e := range errs {
		ls[i] = located{line: e.path.line(lines), e: e}
	}
	sort.SliceStable(ls, func(i, j int) bool { return ls[i].line < ls[j].line })
	return &SpecError{File: file, Line: ls[0].line, Field: ls[0].e.path.String(), Msg: ls[0].e.msg}
}

// tomlError converts an error from toml.Decode into a SpecError.
func tomlError(file string, data []byte, err error) *SpecError {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		field := pe.LastKey
		if field != "" {
			// Add the array index that toml leaves out: take the last
			// occurrence of the key at or before the error's line.
			best, bestLine := "", 0
			for p, l := range scanKeyLines(data) {
				if l <= pe.Position.Line && !strings.HasSuffix(p, "]") && stripIndexes(p) == field &&
					(l > bestLine || l == bestLine && p < best) {
					best, bestLine = p, l
				}
			}
			if best != "" {
				field = best
			}
		}
		msg := pe.Message
		if pe.Usage != "" && msg == "" {
			msg = pe.Usage
		}
		return &SpecError{File: file, Line: pe.Position.Line, Field: field, Msg: msg}
	}
	// Type errors are plain errors: "toml: line N (last key "k"): msg".
	msg := strings.TrimPrefix(err.Error(), "toml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if sp := strings.IndexByte(rest, ' '); sp > 0 {
			if n, err := strconv.Atoi(rest[:sp]); err == nil {
				line, msg = n, rest[sp+1:]
			}
		}
	}
	field := ""
	if rest, ok := strings.CutPrefix(msg, "(last key "); ok {
		if q, err := strconv.QuotedPrefix(rest); err == nil {
			if k, err := strconv.Unquote(q); err == nil {
				if r, ok := strings.CutPrefix(rest[len(q):], "): "); ok {
					field, msg = k, r
				}
			}
		}
	}
	return &SpecError{File: file, Line: line, Field: field, Msg: msg}
}

// stripIndexes removes the "[N]" parts of a formatted key path. Quoted key
// parts are left alone.
func stripIndexes(p string) string {
	var b strings.Builder
	inQuote := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(p):
			b.WriteByte(c)
			i++
			c = p[i]
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '[':
			for i < len(p) && p[i] != ']' {
				i++
			}
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// lookupLoose finds the first key (by line) that matches k once array
// indexes are ignored.
func lookupLoose(lines map[string]int, k string) string {
	best, bestLine := "", 0
	for p, l := range lines {
		if stripIndexes(p) == k && (bestLine == 0 || l < bestLine || (l == bestLine && p < best)) {
			best, bestLine = p, l
		}
	}
	return best
}

// ---------------------------------------------------------------------------
// Key paths

// fieldPath is a TOML key path as a list of formatted parts: keys (quoted if
// they are not bare keys, as toml.Key.String does) and "[N]" array indexes.
type fieldPath []string

func (p fieldPath) key(k string) fieldPath {
	return append(p[:len(p):len(p)], toml.Key{k}.String())
}

func (p fieldPath) idx(i int) fieldPath {
	return append(p[:len(p):len(p)], "["+strconv.Itoa(i)+"]")
}

func (p fieldPath) String() string {
	var b strings.Builder
	for i, s := range p {
		if i > 0 && !strings.HasPrefix(s, "[") {
			b.WriteByte('.')
		}
		b.WriteString(s)
	}
	return b.String()
}

// line returns the line of the key, or of its closest ancestor that has
// one (a table header, an inline table's key), or 0.
func (p fieldPath) line(lines map[string]int) int {
	for n := len(p); n > 0; n-- {
		if l, ok := lines[p[:n].String()]; ok {
			return l
		}
	}
	return 0
}

// ---------------------------------------------------------------------------
// Type checking against the Spec struct

var (
	specType          = reflect.TypeOf(Spec{})
	textUnmarshalType = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
)

// tomlFieldByName returns the struct field whose toml tag (or name) is k.
// The toml package also matches case-insensitively; we do not, but we use
// such a match as a hint.
func tomlFieldByName(t reflect.Type, k string) (f reflect.StructField, ok bool, hint string) {
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag, _, _ := strings.Cut(sf.Tag.Get("toml"), ",")
		if tag == "-" || !sf.IsExported() {
			continue
		}
		if tag == "" {
			tag = sf.Name
		}
		if tag == k {
			return sf, true, ""
		}
		if strings.EqualFold(tag, k) {
			hint = tag
		}
	}
	return reflect.StructField{}, false, hint
}

// checkTOMLValue checks v, a value from a generic toml decode, against the
// Go type t and appends what is wrong to errs.
func checkTOMLValue(p fieldPath, v any, t reflect.Type, errs *[]specFieldErr) {
	if reflect.PointerTo(t).Implements(textUnmarshalType) {
		s, ok := v.(string)
		if !ok {
			*errs = append(*errs, fieldErrf(p, "expected a string, got %s", tomlTypeName(v)))
			return
		}
		u := reflect.New(t).Interface().(encoding.TextUnmarshaler)
		if err := u.UnmarshalText([]byte(s)); err != nil {
			*errs = append(*errs, fieldErrf(p, "%s", textError(t, s, err)))
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			*errs = append(*errs, fieldErrf(p, "expected a table, got %s", tomlTypeName(v)))
			return
		}
		for _, k := range sortedKeys(m) {
			sf, ok, hint := tomlFieldByName(t, k)
			if !ok {
				msg := "unknown field"
				if hint != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", hint)
				}
				*errs = append(*errs, fieldErrf(p.key(k), "%s", msg))
				continue
			}
			checkTOMLValue(p.key(k), m[k], sf.Type, errs)
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			*errs = append(*errs, fieldErrf(p, "expected a table, got %s", tomlTypeName(v)))
			return
		}
		for _, k := range sortedKeys(m) {
			checkTOMLValue(p.key(k), m[k], t.Elem(), errs)
		}
	case reflect.Slice:
		switch a := v.(type) {
		case []any:
			for i, e := range a {
				checkTOMLValue(p.idx(i), e, t.Elem(), errs)
			}
		case []map[string]any:
			for i, e := range a {
				checkTOMLValue(p.idx(i), e, t.Elem(), errs)
			}
		default:
			*errs = append(*errs, fieldErrf(p, "expected an array, got %s", tomlTypeName(v)))
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			msg := fmt.Sprintf("expected a string, got %s", tomlTypeName(v))
			if len(p) == 2 && p[0] == "limits" && p[1] == "memory" {
				msg = fmt.Sprintf(`expected a string such as "512M" or "1048576", got %s`, tomlTypeName(v))
			}
			*errs = append(*errs, fieldErrf(p, "%s", msg))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			*errs = append(*errs, fieldErrf(p, "expected a boolean, got %s", tomlTypeName(v)))
		}
	case reflect.Int, reflect.Int64:
		if _, ok := v.(int64); !ok {
			*errs = append(*errs, fieldErrf(p, "expected an integer, got %s", tomlTypeName(v)))
		}
	case reflect.Uint, reflect.Uint64:
		n, ok := v.(int64)
		switch {
		case !ok:
			*errs = append(*errs, fieldErrf(p, "expected an integer, got %s", tomlTypeName(v)))
		case n < 0:
			*errs = append(*errs, fieldErrf(p, "must not be negative, got %d", n))
		}
	default:
		// Not used by Spec; let toml.Decode deal with it.
	}
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func tomlTypeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date/time"
	case []any:
		return "an array"
	case []map[string]any:
		return "an array of tables"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%T", v)
}

func textError(t reflect.Type, s string, err error) string {
	msg := err.Error()
	// netip errors look like `netip.ParsePrefix("x"): no '/'` or
	// `ParseAddr("x"): IPv4 address too short`; the value is quoted anyway.
	if i := strings.Index(msg, "): "); i >= 0 && strings.Contains(msg[:i], `("`) {
		msg = msg[i+3:]
	}
	switch t {
	case reflect.TypeOf(netip.Prefix{}):
		return fmt.Sprintf("invalid address/prefix length %q (want e.g. \"10.77.0.10/24\"): %s", s, msg)
	case reflect.TypeOf(netip.Addr{}):
		return fmt.Sprintf("invalid IP address %q: %s", s, msg)
	}
	return fmt.Sprintf("invalid value %q: %s", s, msg)
}

// ---------------------------------------------------------------------------
// Defaults and validation

// applySpecDefaults fills in defaults. It returns an error if a default
// cannot be applied (the default gateway would be the pod's own address).
func applySpecDefaults(s *Spec) []specFieldErr {
	var errs []specFieldErr
	if s.Root.Mode == "" {
		s.Root.Mode = RootHost
	}
	if s.Restart == "" {
		s.Restart = RestartNo
	}
	if s.Hostname == "" {
		s.Hostname = hostnameFromName(s.Name)
	}
	if s.WorkDir == "" {
		s.WorkDir = "/"
	}
	if a := s.Network.Address; a.IsValid() {
		// An empty bridge means the agent's configured one (autopod.toml
		// "bridge"), resolved when the pod starts.
		if !s.Network.Gateway.IsValid() && a.Addr().Is4() && a.Bits() >= 1 && a.Bits() <= 30 {
			gw := a.Masked().Addr().Next()
			if gw == a.Addr() {
				errs = append(errs, fieldErrf(fieldPath{"network", "address"},
					"%s is the default gateway (the first address in %s); use another address or set network.gateway", gw, a.Masked()))
			} else {
				s.Network.Gateway = gw
			}
		}
	}
	if s.Limits.Memory != "" {
		if n, err := ParseSize(s.Limits.Memory); err == nil {
			s.Limits.MemoryBytes = n
		} // else validateSpecAll reports it
	}
	return errs
}

// hostnameFromName returns name if it is a valid hostname, or else name
// with every character other than a-z and 0-9 replaced by '-'.
func hostnameFromName(name string) string {
	if hostnameError(name) == "" {
		return name
	}
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			b[i] = '-'
		}
	}
	return strings.TrimRight(string(b), "-")
}

// explicitZeroErrs reports limits written as 0: zero means "not set" in
// Limits, so an explicit 0 is almost certainly a mistake.
func explicitZeroErrs(tree map[string]any) []specFieldErr {
	var errs []specFieldErr
	lim, _ := tree["limits"].(map[string]any)
	if v, ok := lim["cpu_weight"].(int64); ok && v == 0 {
		errs = append(errs, fieldErrf(fieldPath{"limits", "cpu_weight"}, "must be between 1 and %d, got 0 (omit it for the default)", MaxCPUWeight))
	}
	if v, ok := lim["pids"].(int64); ok && v == 0 {
		errs = append(errs, fieldErrf(fieldPath{"limits", "pids"}, "must be at least 1, got 0 (omit it for no limit)"))
	}
	return errs
}

// validateSpec checks a spec with defaults applied (empty Root.Mode and
// Restart are accepted as their defaults) and returns the first problem, as
// a *SpecError without a line.
func validateSpec(s *Spec) error {
	errs := validateSpecAll(s)
	if len(errs) == 0 {
		return nil
	}
	return &SpecError{File: s.File, Field: errs[0].path.String(), Msg: errs[0].msg}
}

func validateSpecAll(s *Spec) []specFieldErr {
	var errs []specFieldErr
	add := func(p fieldPath, format string, args ...any) {
		errs = append(errs, fieldErrf(p, format, args...))
	}
	at := func(k ...string) fieldPath {
		var p fieldPath
		for _, x := range k {
			p = p.key(x)
		}
		return p
	}

	if s.Name != "" && !podNameRE.MatchString(s.Name) {
		add(nil, "invalid pod name %q", s.Name)
	}

	switch {
	case s.Command == "":
		add(at("command"), "required")
	case hasNUL(s.Command):
		add(at("command"), "must not contain NUL")
	case !path.IsAbs(s.Command):
		add(at("command"), "must be an absolute path, got %q", s.Command)
	}
	for i, a := range s.Args {
		if hasNUL(a) {
			add(at("args").idx(i), "must not contain NUL")
		}
	}
	for _, k := range sortedKeys(anyMap(s.Env)) {
		p := at("env").key(k)
		switch {
		case k == "":
			add(p, "empty variable name")
		case strings.Contains(k, "="):
			add(p, "variable name %q contains '='", k)
		case hasNUL(k) || hasNUL(s.Env[k]):
			add(p, "must not contain NUL")
		}
	}
	if s.WorkDir != "" && (!path.IsAbs(s.WorkDir) || hasNUL(s.WorkDir)) {
		add(at("workdir"), "must be an absolute path, got %q", s.WorkDir)
	}
	if s.User != "" {
		if msg := userError(s.User); msg != "" {
			add(at("user"), "%s", msg)
		}
	}
	if s.Hostname != "" {
		if msg := hostnameError(s.Hostname); msg != "" {
			add(at("hostname"), "%s", msg)
		}
	}

	switch s.Root.Mode {
	case RootHost, "":
		if s.Root.Path != "" {
			add(at("root", "path"), `not allowed with mode = "host"`)
		}
	case RootDir:
		switch {
		case s.Root.Path == "":
			add(at("root", "path"), `required with mode = "dir"`)
		case !path.IsAbs(s.Root.Path) || hasNUL(s.Root.Path):
			add(at("root", "path"), "must be an absolute path, got %q", s.Root.Path)
		}
	default:
		add(at("root", "mode"), `must be "host" or "dir", got %q`, s.Root.Mode)
	}

	targets := map[string]int{}
	for i, m := range s.Mounts {
		p := at("mount").idx(i)
		switch {
		case m.Source == "":
			add(p.key("source"), "required")
		case !path.IsAbs(m.Source) || hasNUL(m.Source):
			add(p.key("source"), "must be an absolute path, got %q", m.Source)
		}
		switch t := path.Clean(m.Target); {
		case m.Target == "":
			add(p.key("target"), "required")
		case !path.IsAbs(m.Target) || hasNUL(m.Target):
			add(p.key("target"), "must be an absolute path, got %q", m.Target)
		case t == "/":
			add(p.key("target"), `must not be "/"`)
		default:
			if j, dup := targets[t]; dup {
				add(p.key("target"), "%q is already the target of mount[%d]", m.Target, j)
			} else {
				targets[t] = i
			}
		}
	}

	n := s.Network
	if a := n.Address; a.IsValid() {
		addr := a.Addr()
		switch {
		case !addr.Is4():
			add(at("network", "address"), "must be an IPv4 address, got %s", a)
		case a.Bits() < 1 || a.Bits() > 30:
			add(at("network", "address"), "prefix length must be between 1 and 30, got /%d", a.Bits())
		case addr == a.Masked().Addr():
			add(at("network", "address"), "%s is the network address of %s", addr, a.Masked())
		case addr == lastAddr(a):
			add(at("network", "address"), "%s is the broadcast address of %s", addr, a.Masked())
		case n.Gateway.IsValid():
			gw := n.Gateway
			switch {
			case !gw.Is4():
				add(at("network", "gateway"), "must be an IPv4 address, got %s", gw)
			case !a.Contains(gw):
				add(at("network", "gateway"), "%s is not in %s", gw, a.Masked())
			case gw == addr:
				add(at("network", "gateway"), "must differ from the pod's address %s", addr)
			case gw == a.Masked().Addr():
				add(at("network", "gateway"), "%s is the network address of %s", gw, a.Masked())
			case gw == lastAddr(a):
				add(at("network", "gateway"), "%s is the broadcast address of %s", gw, a.Masked())
			}
		}
		if n.Bridge != "" {
			if msg := ifnameError(n.Bridge); msg != "" {
				add(at("network", "bridge"), "%s", msg)
			}
		}
	} else {
		if n.Gateway.IsValid() {
			add(at("network", "gateway"), "set without network.address")
		}
		if n.Bridge != "" {
			add(at("network", "bridge"), "set without network.address")
		}
	}

	l := s.Limits
	mem := l.MemoryBytes
	memSet := mem != 0
	if l.Memory != "" {
		v, err := ParseSize(l.Memory)
		if err != nil {
			add(at("limits", "memory"), "%v", err)
		} else if l.MemoryBytes != 0 && l.MemoryBytes != v {
			add(at("limits", "memory"), "%q is %d bytes but memory_bytes is %d", l.Memory, v, l.MemoryBytes)
		}
		mem, memSet = v, err == nil
	}
	if memSet && mem < MinMemoryBytes {
		add(at("limits", "memory"), "must be at least 4M (%d bytes), got %d bytes", MinMemoryBytes, mem)
	}
	if l.CPUWeight > MaxCPUWeight {
		add(at("limits", "cpu_weight"), "must be between 1 and %d, got %d", MaxCPUWeight, l.CPUWeight)
	}
	if l.Pids < 0 || l.Pids > MaxPids {
		add(at("limits", "pids"), "must be between 1 and %d, got %d", MaxPids, l.Pids)
	}

	switch s.Restart {
	case RestartNo, RestartOnFailure, RestartAlways, "":
	default:
		add(at("restart"), `must be "no", "on-failure" or "always", got %q`, s.Restart)
	}
	return errs
}

func anyMap(m map[string]string) map[string]any {
	r := make(map[string]any, len(m))
	for k, v := range m {
		r[k] = v
	}
	return r
}

func hasNUL(s string) bool { return strings.IndexByte(s, 0) >= 0 }

// lastAddr returns the last (broadcast) address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// userError checks a user: a name, a uid or uid:gid. Names are not looked up.
func userError(u string) string {
	id := func(s string) bool {
		n, err := strconv.ParseUint(s, 10, 32)
		return err == nil && n != 1<<32-1 && s[0] != '+'
	}
	if uid, gid, ok := strings.Cut(u, ":"); ok {
		if id(uid) && id(gid) {
			return ""
		}
		return fmt.Sprintf("%q: want a user name, a uid or uid:gid (numeric)", u)
	}
	if id(u) || (len(u) <= 32 && userNameRE.MatchString(u)) {
		return ""
	}
	return fmt.Sprintf("%q: want a user name ([a-z_][a-z0-9_-]*, at most 32 characters), a uid or uid:gid", u)
}

// hostnameError checks a hostname: dot-separated labels of 1 to 63
// letters, digits, '-' and '_' (tolerated, as most resolvers do) that do
// not start or end with '-', at most 64 characters in all (the kernel's
// limit; RFC 1123 would allow 253).
func hostnameError(h string) string {
	if len(h) > maxHostnameLen {
		return fmt.Sprintf("%q is longer than %d characters", h, maxHostnameLen)
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" {
			return fmt.Sprintf("%q has an empty label", h)
		}
		if len(l) > 63 {
			return fmt.Sprintf("%q has a label longer than 63 characters", h)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Sprintf("%q has a label that starts or ends with '-'", h)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Sprintf("%q: only letters, digits, '-', '_' and '.' are allowed", h)
			}
		}
	}
	return ""
}

// ifnameError checks a Linux interface name (see dev_valid_name).
func ifnameError(n string) string {
	switch {
	case len(n) > 15:
		return fmt.Sprintf("%q is longer than 15 characters", n)
	case n == "." || n == "..":
		return fmt.Sprintf("%q is not a valid interface name", n)
	}
	for _, r := range n {
		if r == '/' || r == ':' || r == 0 || r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f' {
			return fmt.Sprintf("%q: interface names must not contain '/', ':' or whitespace", n)
		}
	}
	return ""
}

// ---------------------------------------------------------------------------
// Key line scanner
//
// The toml package does not say where keys are, so scanKeyLines walks the
// document itself. It understands just enough TOML to find keys: comments,
// [table] and [[array]] headers, dotted and quoted keys, all string forms,
// arrays and (possibly multi-line) inline tables. It never fails: on
// anything it does not understand it skips to the next line.

// scanKeyLines returns the line (1-based) of every key, table header, array
// element and implicit (dotted) table in data, by formatted key path
// ("network.address", "mount[1].target", "args[0]"); the first occurrence
// wins.
func scanKeyLines(data []byte) map[string]int {
	sc := &keyScanner{s: string(data), line: 1, lines: map[string]int{}, arrays: map[string]int{}}
	sc.s = strings.TrimPrefix(sc.s, "\ufeff")
	sc.run()
	return sc.lines
}

type keyScanner struct {
	s      string
	i      int
	line   int
	depth  int  // nesting of arrays and inline tables
	bail   bool // too deep: give up on the current top-level value
	lines  map[string]int
	arrays map[string]int // [[array]] path -> number of elements so far
}

func (sc *keyScanner) eof() bool { return sc.i >= len(sc.s) }

func (sc *keyScanner) peek() byte {
	if sc.i < len(sc.s) {
		return sc.s[sc.i]
	}
	return 0
}

func (sc *keyScanner) at(off int) byte {
	if sc.i+off < len(sc.s) {
		return sc.s[sc.i+off]
	}
	return 0
}

// next consumes one byte, counting lines.
func (sc *keyScanner) next() {
	if sc.i < len(sc.s) {
		if sc.s[sc.i] == '\n' {
			sc.line++
		}
		sc.i++
	}
}

func (sc *keyScanner) record(p fieldPath, line int) {
	k := p.String()
	if _, ok := sc.lines[k]; !ok {
		sc.lines[k] = line
	}
}

func (sc *keyScanner) skipSpace() {
	for c := sc.peek(); c == ' ' || c == '\t' || c == '\r'; c = sc.peek() {
		sc.next()
	}
}

// skipBlank skips whitespace, newlines and comments.
func (sc *keyScanner) skipBlank() {
	for !sc.eof() {
		switch sc.peek() {
		case ' ', '\t', '\r', '\n':
			sc.next()
		case '#':
			sc.skipToEOL()
		default:
			return
		}
	}
}

func (sc *keyScanner) skipToEOL() {
	for !sc.eof() && sc.peek() != '\n' {
		sc.next()
	}
}

func (sc *keyScanner) skipLine() {
	sc.skipToEOL()
	sc.next()
}

func (sc *keyScanner) run() {
	var table fieldPath
	for !sc.eof() {
		sc.skipSpace()
		switch c := sc.peek(); c {
		case 0:
			if sc.eof() {
				return
			}
			sc.skipLine()
		case '\n', '#':
			sc.skipLine()
		case '[':
			line := sc.line
			isArray := sc.at(1) == '['
			sc.next()
			if isArray {
				sc.next()
			}
			sc.skipSpace()
			parts, ok := sc.key()
			sc.skipSpace()
			if !ok || sc.peek() != ']' || (isArray && sc.at(1) != ']') {
				sc.skipLine()
				continue
			}
			table = nil
			for j, k := range parts {
				table = table.key(k)
				if n := sc.arrays[table.String()]; n > 0 && j < len(parts)-1 {
					table = table.idx(n - 1)
				}
				sc.record(table, line)
			}
			if isArray {
				n := sc.arrays[table.String()]
				sc.arrays[table.String()] = n + 1
				table = table.idx(n)
				sc.record(table, line)
			}
			sc.skipLine()
		default:
			start := sc.i
			sc.keyValue(table)
			sc.bail = false
			if sc.i == start {
				sc.next()
			}
			sc.skipLine()
		}
	}
}

// keyValue reads `key = value` relative to base.
func (sc *keyScanner) keyValue(base fieldPath) {
	line := sc.line
	parts, ok := sc.key()
	if !ok {
		return
	}
	sc.skipSpace()
	if sc.peek() != '=' {
		return
	}
	sc.next()
	sc.skipSpace()
	p := base
	for _, k := range parts {
		p = p.key(k)
		sc.record(p, line)
	}
	sc.value(p)
}

// key reads a possibly dotted key and returns its unquoted parts.
func (sc *keyScanner) key() ([]string, bool) {
	var parts []string
	for {
		sc.skipSpace()
		var part string
		switch c := sc.peek(); {
		case c == '"':
			s, ok := sc.basicString()
			if !ok {
				return nil, false
			}
			part = s
		case c == '\'':
			s, ok := sc.literalString()
			if !ok {
				return nil, false
			}
			part = s
		case isBareKeyChar(c):
			start := sc.i
			for isBareKeyChar(sc.peek()) {
				sc.next()
			}
			part = sc.s[start:sc.i]
		default:
			return nil, false
		}
		parts = append(parts, part)
		sc.skipSpace()
		if sc.peek() != '.' {
			return parts, true
		}
		sc.next()
	}
}

func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// maxScanDepth bounds the recursion on deeply nested arrays; deeper keys
// are not recorded.
const maxScanDepth = 100

// value skips one value, recording the elements of arrays and the keys of
// inline tables under p.
func (sc *keyScanner) value(p fieldPath) {
	if sc.depth >= maxScanDepth || sc.bail {
		sc.bail = true
		sc.skipToEOL()
		return
	}
	sc.depth++
	defer func() { sc.depth-- }()
	switch sc.peek() {
	case '"':
		if strings.HasPrefix(sc.s[sc.i:], `"""`) {
			sc.multiline('"')
		} else {
			sc.basicString()
		}
	case '\'':
		if strings.HasPrefix(sc.s[sc.i:], `'''`) {
			sc.multiline('\'')
		} else {
			sc.literalString()
		}
	case '[':
		sc.next()
		for n := 0; !sc.bail; {
			sc.skipBlank()
			switch sc.peek() {
			case ']':
				sc.next()
				return
			case ',':
				sc.next()
				continue
			case 0:
				if sc.eof() {
					return
				}
			}
			start := sc.i
			sc.record(p.idx(n), sc.line)
			sc.value(p.idx(n))
			n++
			if sc.i == start {
				sc.next()
			}
		}
	case '{':
		sc.next()
		for !sc.bail {
			sc.skipBlank()
			switch sc.peek() {
			case '}':
				sc.next()
				return
			case ',':
				sc.next()
				continue
			case 0:
				if sc.eof() {
					return
				}
			}
			start := sc.i
			sc.keyValue(p)
			if sc.i == start {
				sc.next()
			}
		}
	default:
		// Number, boolean, date/time (which may contain a space).
		for !sc.eof() {
			switch sc.peek() {
			case ',', ']', '}', '#', '\n', '\r':
				return
			}
			sc.next()
		}
	}
}

// basicString reads a "..." string and returns its value.
func (sc *keyScanner) basicString() (string, bool) {
	sc.next() // "
	var b strings.Builder
	for !sc.eof() {
		c := sc.peek()
		switch c {
		case '"':
			sc.next()
			return b.String(), true
		case '\n':
			return b.String(), false
		case '\\':
			sc.next()
			sc.escape(&b)
			continue
		}
		b.WriteByte(c)
		sc.next()
	}
	return b.String(), false
}

var (
	simpleEscapes = map[byte]byte{'b': '\b', 't': '\t', 'n': '\n', 'f': '\f', 'r': '\r', 'e': 0x1b, '"': '"', '\\': '\\'}
	hexEscapeLen  = map[byte]int{'x': 2, 'u': 4, 'U': 8}
)

// escape decodes the escape sequence after a backslash.
func (sc *keyScanner) escape(b *strings.Builder) {
	c := sc.peek()
	if c == '\n' || sc.eof() {
		return
	}
	sc.next()
	if r, ok := simpleEscapes[c]; ok {
		b.WriteByte(r)
		return
	}
	n := hexEscapeLen[c]
	if n == 0 || sc.i+n > len(sc.s) {
		b.WriteByte('\\')
		b.WriteByte(c)
		return
	}
	v, err := strconv.ParseUint(sc.s[sc.i:sc.i+n], 16, 32)
	if err != nil {
		b.WriteByte('\\')
		b.WriteByte(c)
		return
	}
	sc.i += n
	b.WriteRune(rune(v))
}

// literalString reads a '...' string and returns its value.
func (sc *keyScanner) literalString() (string, bool) {
	sc.next() // '
	start := sc.i
	for !sc.eof() {
		switch sc.peek() {
		case '\'':
			s := sc.s[start:sc.i]
			sc.next()
			return s, true
		case '\n':
			return sc.s[start:sc.i], false
		}
		sc.next()
	}
	return sc.s[start:], false
}

// multiline skips a """ or ”' string. The closing delimiter may be
// preceded by up to two more quotes that belong to the string.
func (sc *keyScanner) multiline(q byte) {
	sc.i += 3
	for !sc.eof() {
		c := sc.peek()
		if c == '\\' && q == '"' {
			sc.next()
			sc.next()
			continue
		}
		if c == q && sc.at(1) == q && sc.at(2) == q {
			sc.i += 3
			for k := 0; k < 2 && sc.peek() == q; k++ {
				sc.next()
			}
			return
		}
		sc.next()
	}
}
