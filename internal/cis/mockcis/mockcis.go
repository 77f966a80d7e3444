// Package mockcis is a mock CIS API with fault injection, for the demo, the
// tests and `datapump mock-cis`. It records every delivery and counts
// duplicates (accepted requests whose idempotency key was already accepted),
// which is how the demo proves exactly-once delivery.
//
// HTTP API:
//
//	POST /<any path>     an item delivery; 200 {"status":"accepted",...}
//	                     unless a fault applies; 400 without Idempotency-Key
//	POST /oauth/token    OAuth2 client-credentials token
//	GET  /_mock/stats    Stats
//	GET  /_mock/requests every Record, in arrival order
//	GET  /_mock/faults   the current Faults
//	PUT  /_mock/faults   replace the Faults
//	POST /_mock/reset    forget requests and counters (faults are kept)
package mockcis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/datapump/datapump/internal/cis"
)

// maxBody is the largest delivery body the mock reads.
const maxBody = 1 << 20

// Options configures a Server.
type Options struct {
	// Faults are the initial faults (none by default).
	Faults Faults
	// Clock stamps ReceivedAt and AcceptedAt (default time.Now).
	Clock func() time.Time
	// Logger receives one debug line per request (default: discard).
	Logger *slog.Logger
	// MaxRecords bounds the records Requests returns, dropping the oldest;
	// 0 keeps all. Stats and AcceptedAt are never truncated.
	MaxRecords int
}

// Record is one delivery as the mock saw it.
type Record struct {
	Seq            int
	IdempotencyKey string
	BillerID       string
	Path           string
	Body           []byte
	ReceivedAt     time.Time
	// Status is the answer the mock chose (a timeout fault records 200: the
	// request was accepted even if the client stopped waiting).
	Status int
}

// MarshalJSON writes the body as JSON when it is JSON, else as a string.
func (r Record) MarshalJSON() ([]byte, error) {
	var body any = string(r.Body)
	if json.Valid(r.Body) {
		body = json.RawMessage(r.Body)
	}
	return json.Marshal(struct {
		Seq            int       `json:"seq"`
		IdempotencyKey string    `json:"idempotencyKey"`
		BillerID       string    `json:"billerId"`
		Path           string    `json:"path"`
		Body           any       `json:"body"`
		ReceivedAt     time.Time `json:"receivedAt"`
		Status         int       `json:"status"`
	}{r.Seq, r.IdempotencyKey, r.BillerID, r.Path, body, r.ReceivedAt, r.Status})
}

// Stats counts deliveries by outcome.
type Stats struct {
	// Requests is every delivery received.
	Requests int `json:"requests"`
	// Accepted is deliveries answered 2xx (including timeout and bad-payload
	// faults, which accept the item).
	Accepted int `json:"accepted"`
	// Rejected is deliveries answered with a permanent 4xx (400, 401, 413, 422).
	Rejected int `json:"rejected"`
	// Failed is deliveries answered with a transient error (429, 503).
	Failed int `json:"failed"`
	// UniqueAccepted is the number of distinct idempotency keys accepted.
	UniqueAccepted int `json:"uniqueAccepted"`
	// Duplicates is accepted deliveries whose key had already been accepted.
	Duplicates int `json:"duplicates"`
	// Resends is the Duplicates that were a later attempt of one client
	// call (cis.AttemptHeader above 1): the answer to an accepted attempt
	// was lost or came too late, and the client sent it again. The rest are
	// second deliveries of an item.
	Resends int `json:"resends"`
	// DuplicateAfterMinMs and DuplicateAfterMaxMs are the shortest and the
	// longest time from a key's first acceptance to an accepted duplicate
	// of it (0 with no duplicates): a resend that comes no sooner than the
	// client's timeout after the acceptance was an answer that came too
	// late for it.
	DuplicateAfterMinMs float64 `json:"duplicateAfterMinMs,omitempty"`
	DuplicateAfterMaxMs float64 `json:"duplicateAfterMaxMs,omitempty"`
	// TokensIssued is the number of OAuth2 tokens /oauth/token handed out.
	TokensIssued int `json:"tokensIssued"`
}

// Server is the mock CIS; it implements http.Handler and is safe for
// concurrent use.
type Server struct {
	clock      func() time.Time
	log        *slog.Logger
	maxRecords int

	mu            sync.Mutex
	faults        Faults
	rejectBillers map[string]bool
	rng           *rand.Rand
	failFirstSeen map[string]int
	seq           int
	records       []Record
	stats         Stats
	accepted      map[string]time.Time
	tokens        map[string]bool
}

// New returns a Server with opts.
func New(opts Options) *Server {
	s := &Server{
		clock:      opts.Clock,
		log:        opts.Logger,
		maxRecords: opts.MaxRecords,
		tokens:     map[string]bool{},
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.SetFaults(opts.Faults)
	s.Reset()
	return s
}

// SetFaults replaces the faults, reseeds the random source and restarts the
// FailFirst counts. It does not validate (see Faults.Validate).
func (s *Server) SetFaults(f Faults) {
	f = f.clone()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
	s.rejectBillers = map[string]bool{}
	for _, b := range f.RejectBillers {
		s.rejectBillers[b] = true
	}
	s.rng = newRand(f.Seed)
	s.failFirstSeen = map[string]int{}
}

// Faults returns the current faults.
func (s *Server) Faults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.clone()
}

// Reset forgets every request, the counters and FailFirst counts, and
// reseeds the random source. Faults and issued tokens are kept.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq = 0
	s.records = nil
	s.stats = Stats{}
	s.accepted = map[string]time.Time{}
	s.failFirstSeen = map[string]int{}
	s.rng = newRand(s.faults.Seed)
}

func newRand(seed int64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), uint64(seed)^0x9e3779b97f4a7c15))
}

// Requests returns every recorded delivery, in arrival order.
func (s *Server) Requests() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Record, len(s.records))
	for i, r := range s.records {
		r.Body = slices.Clone(r.Body)
		out[i] = r
	}
	return out
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// AcceptedAt returns when key was first accepted.
func (s *Server) AcceptedAt(key string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.accepted[key]
	return t, ok
}

// ServeHTTP routes deliveries, the token endpoint and the /_mock API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/oauth/token":
		if r.Method != http.MethodPost {
			methodNotAllowed(w, http.MethodPost)
			return
		}
		s.serveToken(w, r)
	case strings.HasPrefix(r.URL.Path, "/_mock/"):
		s.serveAdmin(w, r)
	case r.Method == http.MethodPost:
		s.serveDelivery(w, r)
	default:
		methodNotAllowed(w, http.MethodPost)
	}
}

// outcome is what the mock decided to do with a delivery.
type outcome int

const (
	outcomeAccept outcome = iota
	outcomeMissingKey
	outcomeTooLarge
	outcomeUnauthorized
	outcomeRejectBiller
	outcomeFailFirst
	outcome5xx
	outcome429
	outcomeTimeout
	outcomeReject
	outcomeBadPayload
)

var outcomeStatus = map[outcome]int{
	outcomeAccept:       http.StatusOK,
	outcomeMissingKey:   http.StatusBadRequest,
	outcomeTooLarge:     http.StatusRequestEntityTooLarge,
	outcomeUnauthorized: http.StatusUnauthorized,
	outcomeRejectBiller: http.StatusUnprocessableEntity,
	outcomeFailFirst:    http.StatusServiceUnavailable,
	outcome5xx:          http.StatusServiceUnavailable,
	outcome429:          http.StatusTooManyRequests,
	outcomeTimeout:      http.StatusOK,
	outcomeReject:       http.StatusUnprocessableEntity,
	outcomeBadPayload:   http.StatusOK,
}

func (s *Server) serveDelivery(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		// The client went away mid-body; there is nobody to answer.
		return
	}
	tooLarge := len(body) > maxBody
	if tooLarge {
		body = body[:maxBody]
	}
	key := r.Header.Get("Idempotency-Key")
	biller := r.Header.Get("X-Biller-Id")
	if biller == "" {
		var b struct {
			BillerID string `json:"billerId"`
		}
		if json.Unmarshal(body, &b) == nil {
			biller = b.BillerID
		}
	}

	out, delay, duplicate := s.decide(r, key, biller, body, tooLarge)
	status := outcomeStatus[out]
	s.log.Debug("mock cis delivery", slog.String("biller", biller), slog.String("item", key),
		slog.String("path", r.URL.Path), slog.Int("status", status), slog.Duration("delay", delay))

	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			// The client gave up or the server is stopping: drop the
			// connection rather than let net/http send an empty 200.
			panic(http.ErrAbortHandler)
		}
	}
	switch out {
	case outcomeAccept, outcomeTimeout:
		writeJSON(w, status, map[string]any{"status": "accepted", "idempotencyKey": key, "duplicate": duplicate})
	case outcomeBadPayload:
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "<html><body>accepted, badly</body></html>")
	case outcome429:
		w.Header().Set("Retry-After", "1")
		writeError(w, status, "too many requests (injected)")
	case outcomeMissingKey:
		writeError(w, status, "missing Idempotency-Key header")
	case outcomeTooLarge:
		writeError(w, status, fmt.Sprintf("body above %d bytes", maxBody))
	case outcomeUnauthorized:
		writeError(w, status, "unauthorized")
	case outcomeRejectBiller:
		writeError(w, status, fmt.Sprintf("biller %q rejects every item (injected)", biller))
	case outcomeReject:
		writeError(w, status, "item rejected (injected)")
	default:
		writeError(w, status, "service unavailable (injected)")
	}
}

// decide picks the outcome of one delivery, records it and updates the
// counters, atomically, so that arrival order, records and stats agree.
func (s *Server) decide(r *http.Request, key, biller string, body []byte, tooLarge bool) (out outcome, delay time.Duration, duplicate bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.faults
	switch {
	case key == "":
		out = outcomeMissingKey
	case tooLarge:
		out = outcomeTooLarge
	case f.RequireAPIKey != "" && r.Header.Get("X-Api-Key") != f.RequireAPIKey:
		out = outcomeUnauthorized
	case f.RequireBearer && !s.tokens[bearer(r)]:
		out = outcomeUnauthorized
	case s.rejectBillers[biller]:
		out = outcomeRejectBiller
	case f.FailFirst[key] > 0 && s.failFirstSeen[key] < f.FailFirst[key]:
		s.failFirstSeen[key]++
		out = outcomeFailFirst
	default:
		out = s.draw(f)
	}

	delay = f.Latency
	if f.LatencyJitter > 0 {
		delay += time.Duration(s.rng.Int64N(int64(f.LatencyJitter)))
	}
	if out == outcomeTimeout {
		if f.TimeoutDelay > 0 {
			delay += f.TimeoutDelay
		} else {
			delay += DefaultTimeoutDelay
		}
	}

	now := s.clock()
	status := outcomeStatus[out]
	s.seq++
	s.records = append(s.records, Record{
		Seq: s.seq, IdempotencyKey: key, BillerID: biller, Path: r.URL.Path,
		Body: slices.Clone(body), ReceivedAt: now, Status: status,
	})
	if s.maxRecords > 0 && len(s.records) > s.maxRecords {
		s.records = slices.Delete(s.records, 0, len(s.records)-s.maxRecords)
	}
	s.stats.Requests++
	switch {
	case status >= 200 && status < 300:
		s.stats.Accepted++
		if first, seen := s.accepted[key]; seen {
			s.stats.Duplicates++
			after := float64(now.Sub(first).Microseconds()) / 1000
			if s.stats.Duplicates == 1 || after < s.stats.DuplicateAfterMinMs {
				s.stats.DuplicateAfterMinMs = after
			}
			s.stats.DuplicateAfterMaxMs = max(s.stats.DuplicateAfterMaxMs, after)
			if n, err := strconv.Atoi(r.Header.Get(cis.AttemptHeader)); err == nil && n > 1 {
				s.stats.Resends++
			}
			duplicate = true
		} else {
			s.stats.UniqueAccepted++
			s.accepted[key] = now
		}
	case status == http.StatusTooManyRequests || status >= 500:
		s.stats.Failed++
	default:
		s.stats.Rejected++
	}
	return out, delay, duplicate
}

// draw picks a random fault (or none) from one uniform number.
func (s *Server) draw(f Faults) outcome {
	u := s.rng.Float64()
	for _, band := range []struct {
		rate float64
		out  outcome
	}{
		{f.Rate5xx, outcome5xx}, {f.Rate429, outcome429}, {f.RateTimeout, outcomeTimeout},
		{f.RateReject, outcomeReject}, {f.RateBadPayload, outcomeBadPayload},
	} {
		if u < band.rate {
			return band.out
		}
		u -= band.rate
	}
	return outcomeAccept
}

func bearer(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return token
}

// serveToken answers an OAuth2 client-credentials request (RFC 6749 4.4):
// any non-empty client id and secret, as basic auth or form fields.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id == "" || secret == "" {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		return
	}
	s.mu.Lock()
	s.stats.TokensIssued++
	token := fmt.Sprintf("mock-token-%d-%d", s.stats.TokensIssued, s.clock().UnixNano())
	s.tokens[token] = true
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": token,
		"token_type":   "Bearer",
		"expires_in":   3600,
		"scope":        r.PostForm.Get("scope"),
	})
}

func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_mock/stats":
		if r.Method != http.MethodGet {
			methodNotAllowed(w, http.MethodGet)
			return
		}
		writeJSON(w, http.StatusOK, s.Stats())
	case "/_mock/requests":
		if r.Method != http.MethodGet {
			methodNotAllowed(w, http.MethodGet)
			return
		}
		writeJSON(w, http.StatusOK, s.Requests())
	case "/_mock/faults":
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, http.StatusOK, s.Faults())
		case http.MethodPut:
			var f Faults
			if err := json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(&f); err != nil {
				writeError(w, http.StatusBadRequest, "faults: "+err.Error())
				return
			}
			if err := f.Validate(); err != nil {
				writeError(w, http.StatusBadRequest, "faults: "+err.Error())
				return
			}
			s.SetFaults(f)
			writeJSON(w, http.StatusOK, s.Faults())
		default:
			methodNotAllowed(w, http.MethodGet+", "+http.MethodPut)
		}
	case "/_mock/reset":
		if r.Method != http.MethodPost {
			methodNotAllowed(w, http.MethodPost)
			return
		}
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	default:
		writeError(w, http.StatusNotFound, "unknown mock endpoint "+r.URL.Path)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "method not allowed")
}

// ListenAndServe serves the mock on addr until ctx ends, then shuts down
// gracefully (requests hanging on a latency or timeout fault are cut short).
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("mock cis: listen: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve is ListenAndServe on an existing listener (":0" in tests).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		// Request contexts end with ctx, so hanging faults return at once.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	s.log.Info("mock cis listening", slog.String("addr", ln.Addr().String()))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("mock cis: serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("mock cis: shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("mock cis: serve: %w", err)
	}
	return nil
}
