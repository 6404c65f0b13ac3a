package fleetlock

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
)

// Error kinds Server sends; the protocol asks for few of them.
const (
	KindSemaphoreFull    = "failed_lock_semaphore_full" // the protocol document's own example
	KindMissingHeader    = "missing_fleet_lock_header"
	KindBadRequest       = "bad_request"
	KindUnknownGroup     = "unknown_group"
	KindNotFound         = "not_found"
	KindMethodNotAllowed = "method_not_allowed"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Slots is how many nodes of one group may hold a slot at once; zero
	// means 1.
	Slots int
	// Groups, if not nil, lists the only groups served, each with its own
	// number of slots; other groups are refused. If nil, every valid group
	// is served with Slots slots.
	Groups map[string]int
	// Log receives one line per granted or released slot; nil discards.
	Log *slog.Logger
}

func (o *ServerOptions) validate() error {
	if o.Slots < 0 {
		return fmt.Errorf("fleetlock server: negative slot count %d", o.Slots)
	}
	if o.Slots == 0 {
		o.Slots = 1
	}
	for g, n := range o.Groups {
		if !groupPattern.MatchString(g) || n < 1 {
			return fmt.Errorf("fleetlock server: group %q with %d slots: want a valid name and at least 1 slot", g, n)
		}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Server is an in-memory FleetLock server: one counting semaphore per
// group, whose slots are owned by node ids (see the package
// documentation). It serves v1/pre-reboot and v1/steady-state at the root
// of its handler; mount it under a base path with http.StripPrefix. State
// is lost when the process exits.
type Server struct {
	opts ServerOptions

	mu      sync.Mutex
	holders map[string][]string // group -> ids holding a slot, in grant order
}

// NewServer returns a Server with no slot taken.
func NewServer(opts ServerOptions) (*Server, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	return &Server{opts: opts, holders: map[string][]string{}}, nil
}

// Holders returns the ids that hold a slot of group, in the order the
// slots were granted.
func (s *Server) Holders(group string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.holders[group])
}

// ServeHTTP implements the protocol.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var lock bool
	switch r.URL.Path {
	case "/" + pathPreReboot:
		lock = true
	case "/" + pathSteadyState:
	default:
		writeError(w, http.StatusNotFound, KindNotFound, fmt.Sprintf("no endpoint %s; want /%s or /%s", r.URL.Path, pathPreReboot, pathSteadyState))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, KindMethodNotAllowed, r.Method+" is not allowed; the protocol uses POST")
		return
	}
	if r.Header.Get(Header) != "true" {
		writeError(w, http.StatusBadRequest, KindMissingHeader, fmt.Sprintf("header %q must be \"true\"", Header))
		return
	}
	params, err := decodeRequest(w, r)
	if err != nil {
		writeError(w, http.StatusBadRequest, KindBadRequest, err.Error())
		return
	}
	slots := s.opts.Slots
	if s.opts.Groups != nil {
		n, ok := s.opts.Groups[params.Group]
		if !ok {
			writeError(w, http.StatusBadRequest, KindUnknownGroup, fmt.Sprintf("unknown group %q", params.Group))
			return
		}
		slots = n
	}
	if lock {
		if held, err := s.lock(params, slots); err != nil {
			writeError(w, http.StatusConflict, KindSemaphoreFull, err.Error())
			return
		} else if !held {
			s.opts.Log.Info("reboot slot granted", "group", params.Group, "id", params.ID)
		}
	} else if s.unlock(params) {
		s.opts.Log.Info("reboot slot released", "group", params.Group, "id", params.ID)
	}
	w.WriteHeader(http.StatusOK)
}

// lock takes a slot for the id, or reports that it already held one.
func (s *Server) lock(p clientParams, slots int) (alreadyHeld bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	holders := s.holders[p.Group]
	if slices.Contains(holders, p.ID) {
		return true, nil
	}
	if len(holders) >= slots {
		return false, fmt.Errorf("semaphore of group %q is full: all %d slots are held (by %v)", p.Group, slots, holders)
	}
	s.holders[p.Group] = append(holders, p.ID)
	return false, nil
}

// unlock releases the id's slot and reports whether it held one.
func (s *Server) unlock(p clientParams) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	holders := s.holders[p.Group]
	i := slices.Index(holders, p.ID)
	if i < 0 {
		return false
	}
	s.holders[p.Group] = slices.Delete(holders, i, i+1)
	return true
}

// decodeRequest reads and checks the body. It also accepts the id under
// its old name, node_uuid.
func decodeRequest(w http.ResponseWriter, r *http.Request) (clientParams, error) {
	var body struct {
		ClientParams *struct {
			ID       string `json:"id"`
			NodeUUID string `json:"node_uuid"`
			Group    string `json:"group"`
		} `json:"client_params"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxErrorBody))
	if err := dec.Decode(&body); err != nil {
		return clientParams{}, fmt.Errorf("body is not the protocol's JSON: %w", err)
	}
	cp := body.ClientParams
	if cp == nil {
		return clientParams{}, errors.New("body has no client_params object")
	}
	p := clientParams{ID: cp.ID, Group: cp.Group}
	if p.ID == "" {
		p.ID = cp.NodeUUID
	}
	if p.ID == "" {
		return clientParams{}, errors.New("client_params.id is missing or empty")
	}
	if !groupPattern.MatchString(p.Group) {
		return clientParams{}, fmt.Errorf("client_params.group %q does not match %s", p.Group, groupPattern)
	}
	return p, nil
}

func writeError(w http.ResponseWriter, status int, kind, value string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Kind: kind, Value: value})
}
