package fleetlock

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// startServer serves a Server under /base on 127.0.0.1 and returns the
// base URL.
func startServer(t *testing.T, opts ServerOptions) (*Server, string) {
	t.Helper()
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(http.StripPrefix("/base", srv))
	t.Cleanup(hs.Close)
	return srv, hs.URL + "/base"
}

func newClient(t *testing.T, opts Options) *Client {
	t.Helper()
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// refusal returns err as an *Error, failing the test if it is not one.
func refusal(t *testing.T, err error) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *fleetlock.Error", err, err)
	}
	return e
}

func TestLockUnlock(t *testing.T) {
	srv, base := startServer(t, ServerOptions{Slots: 1})
	ctx := testCtx(t)
	a := newClient(t, Options{URL: base, ID: "node-a"})
	b := newClient(t, Options{URL: base, ID: "node-b"})
	holders := func(want ...string) {
		t.Helper()
		if got := srv.Holders(DefaultGroup); !slices.Equal(got, want) {
			t.Fatalf("holders %q, want %q", got, want)
		}
	}

	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	holders("node-a")
	if err := a.Lock(ctx); err != nil {
		t.Fatalf("re-acquiring a held slot: %v", err)
	}
	holders("node-a")

	e := refusal(t, b.Lock(ctx))
	if e.StatusCode != http.StatusConflict || e.Kind != KindSemaphoreFull || !strings.Contains(e.Value, "node-a") || e.Op != "pre-reboot" {
		t.Errorf("second node refused with %+v", e)
	}
	if msg := e.Error(); !strings.Contains(msg, KindSemaphoreFull) || !strings.Contains(msg, "409") || !strings.Contains(msg, "full") {
		t.Errorf("refusal message %q lacks status, kind or value", msg)
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatalf("releasing a slot not held: %v", err)
	}
	holders("node-a")

	// Another group has its own semaphore.
	w := newClient(t, Options{URL: base, ID: "node-w", Group: "workers"})
	if err := w.Lock(ctx); err != nil {
		t.Fatal(err)
	}

	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	holders()
	if err := a.Unlock(ctx); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if err := b.Lock(ctx); err != nil {
		t.Fatalf("second node after the release: %v", err)
	}
	holders("node-b")
	if got := srv.Holders("workers"); !slices.Equal(got, []string{"node-w"}) {
		t.Errorf("workers holders %q", got)
	}
}

func TestServerSlotsUnderContention(t *testing.T) {
	srv, base := startServer(t, ServerOptions{Slots: 2})
	ctx := testCtx(t)
	ids := []string{"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"}
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { errs[i] = newClient(t, Options{URL: base, ID: id}).Lock(ctx) })
	}
	wg.Wait()
	granted := 0
	for _, err := range errs {
		if err == nil {
			granted++
		} else if e := refusal(t, err); e.Kind != KindSemaphoreFull {
			t.Errorf("refused with %+v", e)
		}
	}
	if held := srv.Holders(DefaultGroup); granted != 2 || len(held) != 2 {
		t.Errorf("%d nodes granted, holders %q: want 2", granted, held)
	}
}

func TestServerGroups(t *testing.T) {
	srv, base := startServer(t, ServerOptions{Groups: map[string]int{"workers": 2}})
	ctx := testCtx(t)
	e := refusal(t, newClient(t, Options{URL: base, ID: "x"}).Lock(ctx))
	if e.StatusCode != http.StatusBadRequest || e.Kind != KindUnknownGroup {
		t.Errorf("unknown group refused with %+v", e)
	}
	for _, id := range []string{"x", "y"} {
		if err := newClient(t, Options{URL: base, ID: id, Group: "workers"}).Lock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := srv.Holders("workers"); len(got) != 2 {
		t.Errorf("workers holders %q", got)
	}
	if _, err := NewServer(ServerOptions{Groups: map[string]int{"bad group": 1}}); err == nil {
		t.Error("NewServer accepted an invalid group name")
	}
}

// Requests that are not the protocol's, sent raw.
func TestServerRejects(t *testing.T) {
	srv, base := startServer(t, ServerOptions{})
	const good = `{"client_params":{"id":"n1","group":"default"}}`
	cases := []struct {
		name, method, path, header, body string
		status                           int
		kind                             string
	}{
		{"no header", "POST", "/v1/pre-reboot", "", good, 400, KindMissingHeader},
		{"header false", "POST", "/v1/pre-reboot", "false", good, 400, KindMissingHeader},
		{"GET", "GET", "/v1/pre-reboot", "true", "", 405, KindMethodNotAllowed},
		{"unknown path", "POST", "/v2/pre-reboot", "true", good, 404, KindNotFound},
		{"not JSON", "POST", "/v1/pre-reboot", "true", "id=n1&group=default", 400, KindBadRequest},
		{"no client_params", "POST", "/v1/steady-state", "true", `{"id":"n1"}`, 400, KindBadRequest},
		{"empty id", "POST", "/v1/pre-reboot", "true", `{"client_params":{"id":"","group":"default"}}`, 400, KindBadRequest},
		{"no group", "POST", "/v1/pre-reboot", "true", `{"client_params":{"id":"n1"}}`, 400, KindBadRequest},
		{"bad group", "POST", "/v1/pre-reboot", "true", `{"client_params":{"id":"n1","group":"a b"}}`, 400, KindBadRequest},
		{"old node_uuid", "POST", "/v1/pre-reboot", "true", `{"client_params":{"node_uuid":"n9","group":"default"}}`, 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(testCtx(t), tc.method, base+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.header != "" {
				req.Header.Set(Header, tc.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.kind == "" {
				return
			}
			var eb errorBody
			if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil || eb.Kind != tc.kind || eb.Value == "" {
				t.Errorf("error body %+v (%v), want kind %q and a value", eb, err, tc.kind)
			}
		})
	}
	if got := srv.Holders(DefaultGroup); !slices.Equal(got, []string{"n9"}) {
		t.Errorf("holders %q, want only the node_uuid request's", got)
	}
}

// The client's requests, as a server sees them.
func TestClientRequests(t *testing.T) {
	type seen struct{ method, path, header, ctype, body string }
	var mu sync.Mutex
	var got []seen
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, seen{r.Method, r.URL.Path, r.Header.Get(Header), r.Header.Get("Content-Type"), string(b)})
		mu.Unlock()
		_, _ = io.WriteString(w, "not JSON, and fine: a 200 body means nothing")
	}))
	defer hs.Close()
	ctx := testCtx(t)
	for _, base := range []string{hs.URL + "/base", hs.URL + "/base/"} {
		c := newClient(t, Options{URL: base, ID: "c988d2509fdf4cdcbed39037c56406fb", Group: "workers"})
		if err := c.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	const body = `{"client_params":{"id":"c988d2509fdf4cdcbed39037c56406fb","group":"workers"}}`
	pre := seen{"POST", "/base/v1/pre-reboot", "true", "application/json", body}
	steady := seen{"POST", "/base/v1/steady-state", "true", "application/json", body}
	if want := []seen{pre, steady, pre, steady}; !slices.Equal(got, want) {
		t.Errorf("server saw\n%+v\nwant\n%+v", got, want)
	}
}

func TestClientErrorStatuses(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/json/v1/pre-reboot", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusInternalServerError, "failed_lock_etcd", "etcd is down")
	})
	mux.HandleFunc("/html/v1/pre-reboot", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "<html>\n<body>502 Bad Gateway\n</body>\n</html>\n")
	})
	mux.HandleFunc("/json-other/v1/pre-reboot", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"error":"forbidden"}`)
	})
	mux.HandleFunc("/nocontent/v1/pre-reboot", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/moved/v1/pre-reboot", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere/v1/pre-reboot", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/elsewhere/v1/pre-reboot", func(w http.ResponseWriter, r *http.Request) {
		t.Error("the client followed a redirect")
	})
	hs := httptest.NewServer(mux)
	defer hs.Close()
	ctx := testCtx(t)

	cases := []struct {
		base   string
		status int
		check  func(e *Error) bool
	}{
		{"/json", 500, func(e *Error) bool { return e.Kind == "failed_lock_etcd" && e.Value == "etcd is down" }},
		{"/html", 502, func(e *Error) bool {
			return e.Kind == "" && e.Body == "<html> <body>502 Bad Gateway </body> </html>" && strings.Contains(e.Error(), "502 Bad Gateway")
		}},
		{"/json-other", 403, func(e *Error) bool { return e.Kind == "" && e.Body == `{"error":"forbidden"}` }},
		{"/nocontent", 204, func(e *Error) bool { return e.Kind == "" && e.Body == "" }},
		{"/moved", 307, func(e *Error) bool {
			return e.Location == "/elsewhere/v1/pre-reboot" && strings.Contains(e.Error(), "not followed")
		}},
	}
	for _, tc := range cases {
		err := newClient(t, Options{URL: hs.URL + tc.base, ID: "n1"}).Lock(ctx)
		e := refusal(t, err)
		if e.StatusCode != tc.status || e.Op != "pre-reboot" || !tc.check(e) {
			t.Errorf("%s: %+v (%q)", tc.base, e, e.Error())
		}
	}
}

func TestClientTimeouts(t *testing.T) {
	release := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Never answers; the client must give up. The body is read so that
		// the server notices the client leaving.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer hs.Close()
	defer close(release)

	c := newClient(t, Options{URL: hs.URL, ID: "n1"})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Lock(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "pre-reboot") {
		t.Errorf("Lock past the caller's deadline: %v", err)
	}

	c = newClient(t, Options{URL: hs.URL, ID: "n1", Timeout: 100 * time.Millisecond})
	start := time.Now()
	if err := c.Unlock(context.Background()); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "steady-state") {
		t.Errorf("Unlock past Options.Timeout: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Options.Timeout of 100ms took %s", d)
	}

	// Nobody listens: a transport error, not an *Error.
	hs2 := httptest.NewServer(http.NotFoundHandler())
	url := hs2.URL
	hs2.Close()
	err := newClient(t, Options{URL: url, ID: "n1"}).Lock(testCtx(t))
	var e *Error
	if err == nil || errors.As(err, &e) {
		t.Errorf("Lock with no server: %v, want a transport error", err)
	}
}

func TestNewOptions(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := file("good", "0123456789abcdef0123456789abcdef\n")

	c := newClient(t, Options{URL: "https://locks.example.com", MachineIDFile: good})
	if c.ID() != "0123456789abcdef0123456789abcdef" || c.Group() != DefaultGroup {
		t.Errorf("defaults: id %q group %q", c.ID(), c.Group())
	}
	if c := newClient(t, Options{URL: "http://h", ID: "given", MachineIDFile: filepath.Join(dir, "absent")}); c.ID() != "given" {
		t.Errorf("explicit id replaced by %q", c.ID())
	}

	bad := []struct {
		name string
		opts Options
	}{
		{"no URL", Options{ID: "n"}},
		{"relative URL", Options{URL: "/v1", ID: "n"}},
		{"ftp URL", Options{URL: "ftp://h/", ID: "n"}},
		{"bad group", Options{URL: "http://h", ID: "n", Group: "a/b"}},
		{"negative timeout", Options{URL: "http://h", ID: "n", Timeout: -time.Second}},
		{"missing machine id", Options{URL: "http://h", MachineIDFile: filepath.Join(dir, "absent")}},
		{"uninitialized machine id", Options{URL: "http://h", MachineIDFile: file("uninit", "uninitialized\n")}},
		{"upper-case machine id", Options{URL: "http://h", MachineIDFile: file("upper", "0123456789ABCDEF0123456789ABCDEF\n")}},
	}
	for _, tc := range bad {
		if _, err := New(tc.opts); err == nil {
			t.Errorf("%s: New succeeded", tc.name)
		}
	}
}
