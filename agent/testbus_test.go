package agent

// Helpers that run a real, private dbus-daemon from test/dbus/system-bus.conf
// (the system bus's policy plus units/org.autopod.Agent1.conf), so the tests
// exercise the bus policy and credential passing, not a mock of them.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autopod/autopod/test/testbus"

	"github.com/godbus/dbus/v5"
)

// nobodyUID is the unprivileged identity the authorisation tests use.
const nobodyUID = 65534

// testBus is one private dbus-daemon.
type testBus struct {
	addr string // as printed by the daemon: unix:path=…,guid=…
	dir  string // holds the socket; reachable by every user
}

// requireRoot skips tests that need root: only root may own
// org.autopod.Agent1 under the policy, and only root can switch to nobody.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bus policy lets only root own org.autopod.Agent1 (run `sudo go test ./agent/`)")
	}
}

// startTestBus starts a dbus-daemon whose socket lives in a temporary
// directory that every user can traverse, and stops it at cleanup.
func startTestBus(t *testing.T) *testBus {
	t.Helper()
	dir := testbus.ShareableTempDir(t)
	return &testBus{addr: testbus.Start(t, dir), dir: dir}
}

// connect opens a connection to the bus, closed at cleanup.
func (b *testBus) connect(t *testing.T) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(b.addr)
	if err != nil {
		t.Fatalf("connect to test bus: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// busctl runs the real busctl against the test bus, as root or, with
// asNobody, as uid/gid 65534 without supplementary groups.
func (b *testBus) busctl(t *testing.T, asNobody bool, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin, lerr := exec.LookPath("busctl")
	if lerr != nil {
		t.Skip("busctl not installed (part of systemd)")
	}
	argv := append([]string{bin, "--address=" + b.addr}, args...)
	if asNobody {
		argv = append(setprivNobody(t), argv...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func setprivNobody(t *testing.T) []string {
	t.Helper()
	bin, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed (util-linux)")
	}
	return []string{bin, "--reuid=65534", "--regid=65534", "--clear-groups"}
}

// ---- calls from an unprivileged client -----------------------------------
//
// busctl prints only an error's message, not its name. To check the exact
// D-Bus error an unprivileged caller gets, the test binary itself is run as
// nobody in the mode of TestDBusNobodyHelper, which makes one call and
// prints the outcome as JSON.

const helperEnv = "AUTOPOD_DBUS_TEST_HELPER"

// helperRequest is one call for the helper process to make.
type helperRequest struct {
	Addr   string `json:"addr"`
	Dest   string `json:"dest"`
	Path   string `json:"path"`
	Method string `json:"method"` // interface.member
	Args   []any  `json:"args"`   // strings, bools and numbers (sent as uint32)
}

// helperResult is what the helper saw.
type helperResult struct {
	UID       int    `json:"uid"`
	ErrorName string `json:"error_name,omitempty"`
	Error     string `json:"error,omitempty"`
	Body      []any  `json:"body,omitempty"`
}

// callAsNobody makes the calls from one process running as uid 65534
// (one process, because a race-enabled test binary takes a second to
// start) and returns their outcomes in order.
func (b *testBus) callAsNobody(t *testing.T, reqs ...helperRequest) []helperResult {
	t.Helper()
	for i := range reqs {
		reqs[i].Addr = b.addr
	}
	// The test binary sits in a root-only build directory; nobody needs a
	// copy it can execute.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(b.dir, "helper.test")
	if _, err := os.Stat(bin); err != nil {
		data, err := os.ReadFile(self)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	reqJSON, err := json.Marshal(reqs)
	if err != nil {
		t.Fatal(err)
	}
	argv := append(setprivNobody(t), bin, "-test.run=^TestDBusNobodyHelper$", "-test.count=1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), helperEnv+"="+string(reqJSON))
	cmd.Dir = b.dir
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("helper as nobody: %v\nstdout: %s\nstderr: %s", err, out, stderr)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "HELPER-RESULT "); ok {
			var res []helperResult
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				t.Fatalf("helper output %q: %v", rest, err)
			}
			if len(res) != len(reqs) {
				t.Fatalf("helper answered %d of %d calls", len(res), len(reqs))
			}
			for _, r := range res {
				if r.UID != nobodyUID {
					t.Fatalf("helper ran as uid %d, want %d", r.UID, nobodyUID)
				}
			}
			return res
		}
	}
	t.Fatalf("helper printed no result:\n%s", out)
	return nil
}

// TestDBusNobodyHelper is not a test: it is the helper process of
// callAsNobody and does nothing unless AUTOPOD_DBUS_TEST_HELPER is set.
func TestDBusNobodyHelper(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		t.Skip("helper process for the authorisation tests")
	}
	var reqs []helperRequest
	if err := json.Unmarshal([]byte(raw), &reqs); err != nil {
		t.Fatal(err)
	}
	results := make([]helperResult, 0, len(reqs))
	for _, req := range reqs {
		results = append(results, helperCall(req))
	}
	out, err := json.Marshal(results)
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("HELPER-RESULT " + string(out) + "\n")
}

// helperCall makes one call on its own connection, so that each call's
// outcome depends on nothing an earlier one did.
func helperCall(req helperRequest) helperResult {
	res := helperResult{UID: os.Getuid()}
	conn, err := dbus.Connect(req.Addr)
	if err != nil {
		res.Error = "connect: " + err.Error()
		return res
	}
	defer conn.Close()
	args := make([]any, len(req.Args))
	for i, a := range req.Args {
		if f, ok := a.(float64); ok {
			a = uint32(f)
		}
		args[i] = a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	call := conn.Object(req.Dest, dbus.ObjectPath(req.Path)).CallWithContext(ctx, req.Method, 0, args...)
	if call.Err != nil {
		res.ErrorName = dbusErrorName(call.Err)
		res.Error = call.Err.Error()
	} else {
		res.Body = call.Body
	}
	return res
}
