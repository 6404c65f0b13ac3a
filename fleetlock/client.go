package fleetlock

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"
)

const (
	// Header is the header every request carries, with the value "true".
	Header = "fleet-lock-protocol"
	// DefaultGroup is the reboot group of a client that names none.
	DefaultGroup = "default"
	// DefaultTimeout bounds one request when Options.Timeout is zero.
	DefaultTimeout = 30 * time.Second
	// DefaultMachineIDFile is where the default node id comes from.
	DefaultMachineIDFile = "/etc/machine-id"
)

// The protocol's endpoints, relative to the base URL.
const (
	pathPreReboot   = "v1/pre-reboot"
	pathSteadyState = "v1/steady-state"
)

// maxErrorBody bounds how much of a response body is read.
const maxErrorBody = 64 << 10

// groupPattern is the protocol's rule for group names.
var groupPattern = regexp.MustCompile(`^[a-zA-Z0-9.-]+$`)

// wire types of the protocol.
type (
	request struct {
		ClientParams clientParams `json:"client_params"`
	}
	clientParams struct {
		ID    string `json:"id"`
		Group string `json:"group"`
	}
	errorBody struct {
		Kind  string `json:"kind"`
		Value string `json:"value"`
	}
)

// Options configure a Client.
type Options struct {
	// URL is the lock server's base URL (http or https); the endpoints
	// are URL/v1/pre-reboot and URL/v1/steady-state.
	URL string
	// Group is the reboot group; empty means DefaultGroup.
	Group string
	// ID identifies this node to the server; empty means the content of
	// MachineIDFile.
	ID string
	// MachineIDFile is read when ID is empty; empty means
	// DefaultMachineIDFile.
	MachineIDFile string
	// Timeout bounds each request on top of the caller's context; zero
	// means DefaultTimeout.
	Timeout time.Duration
	// HTTPClient sends the requests (TLS settings, proxies); nil means a
	// client that follows no redirects. A client given here is used as it
	// is, redirect policy included.
	HTTPClient *http.Client
}

func (o *Options) validate() error {
	u, err := url.Parse(o.URL)
	if err != nil {
		return fmt.Errorf("fleetlock: server URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("fleetlock: server URL %q is not an absolute http or https URL", o.URL)
	}
	if o.Group == "" {
		o.Group = DefaultGroup
	}
	if !groupPattern.MatchString(o.Group) {
		return fmt.Errorf("fleetlock: group %q does not match %s", o.Group, groupPattern)
	}
	if o.Timeout < 0 {
		return fmt.Errorf("fleetlock: negative timeout %s", o.Timeout)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.ID == "" {
		if o.MachineIDFile == "" {
			o.MachineIDFile = DefaultMachineIDFile
		}
		id, err := readMachineID(o.MachineIDFile)
		if err != nil {
			return fmt.Errorf("fleetlock: node id: %w", err)
		}
		o.ID = id
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return nil
}

// readMachineID reads a machine-id(5) file: 32 lower-case hex digits.
func readMachineID(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(data))
	if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%s holds %q, not a machine id (32 hex digits)", path, id)
	}
	return id, nil
}

// Client takes and releases this node's reboot slot. It is safe for
// concurrent use.
type Client struct {
	preReboot, steadyState string
	body                   []byte
	id, group              string
	timeout                time.Duration
	http                   *http.Client
}

// New checks the options, fills in the defaults (reading the machine id if
// needed) and returns a Client.
func New(opts Options) (*Client, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	base, _ := url.Parse(opts.URL) // validate parsed it
	base.RawQuery, base.Fragment = "", ""
	body, err := json.Marshal(request{ClientParams: clientParams{ID: opts.ID, Group: opts.Group}})
	if err != nil {
		return nil, fmt.Errorf("fleetlock: encode request: %w", err)
	}
	return &Client{
		preReboot:   base.JoinPath(pathPreReboot).String(),
		steadyState: base.JoinPath(pathSteadyState).String(),
		body:        body,
		id:          opts.ID,
		group:       opts.Group,
		timeout:     opts.Timeout,
		http:        opts.HTTPClient,
	}, nil
}

// ID is the node id the client sends.
func (c *Client) ID() string { return c.id }

// Group is the reboot group the client sends.
func (c *Client) Group() string { return c.group }

// Lock takes a reboot slot (POST v1/pre-reboot). It succeeds again, and
// takes nothing more, if this node already holds one. A server that
// refuses, because every slot is taken or for any other reason, yields an
// *Error.
func (c *Client) Lock(ctx context.Context) error {
	return c.post(ctx, "pre-reboot", c.preReboot)
}

// Unlock releases this node's reboot slot (POST v1/steady-state); it
// succeeds too when the node holds none.
func (c *Client) Unlock(ctx context.Context) error {
	return c.post(ctx, "steady-state", c.steadyState)
}

func (c *Client) post(ctx context.Context, op, endpoint string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(c.body))
	if err != nil {
		return fmt.Errorf("fleetlock %s: %w", op, err)
	}
	req.Header.Set(Header, "true")
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("fleetlock %s: %w", op, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if resp.StatusCode == http.StatusOK {
		return nil // the body means nothing; it was read so the connection can be reused
	}
	e := &Error{Op: op, URL: endpoint, StatusCode: resp.StatusCode, Location: resp.Header.Get("Location")}
	var eb errorBody
	if json.Unmarshal(body, &eb) == nil && (eb.Kind != "" || eb.Value != "") {
		e.Kind, e.Value = eb.Kind, eb.Value
	} else {
		e.Body = abbreviate(string(body))
	}
	if err != nil {
		e.Body = strings.TrimSpace(e.Body + " (reading the body: " + err.Error() + ")")
	}
	return e
}

// Error is a lock server's refusal: any status but 200.
type Error struct {
	Op         string // "pre-reboot" or "steady-state"
	URL        string
	StatusCode int
	Kind       string // the server's error kind, if it sent the protocol's JSON
	Value      string // the server's description, likewise
	Body       string // otherwise the start of the body, on one line
	Location   string // the target of a redirect, which is not followed
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "fleetlock %s: %s answered %d %s", e.Op, e.URL, e.StatusCode, http.StatusText(e.StatusCode))
	switch {
	case e.Kind != "" || e.Value != "":
		fmt.Fprintf(&b, ": %s: %s", e.Kind, e.Value)
	case e.Body != "":
		fmt.Fprintf(&b, ": %q", e.Body)
	}
	if e.Location != "" {
		fmt.Fprintf(&b, " (redirect to %s not followed)", e.Location)
	}
	return b.String()
}

// abbreviate puts s on one line and shortens it for an error message.
func abbreviate(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	const maxLen = 200
	if len(s) > maxLen {
		s = strings.ToValidUTF8(s[:maxLen], "") + "…"
	}
	return s
}
