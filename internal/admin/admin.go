// Package admin serves the operator endpoints on the admin address:
// /healthz (the process is up), /readyz (store and bus reachable),
// /metrics (Prometheus), /api/status (JSON) and / (the status page).
package admin

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
)

//go:embed status.html.tmpl
var templates embed.FS

var statusPage = template.Must(template.New("status.html.tmpl").Funcs(template.FuncMap{
	"age": func(d time.Duration) string {
		if d <= 0 {
			return "-"
		}
		return d.Round(time.Second).String()
	},
	"count": func(m map[store.Status]int64, s string) int64 { return m[store.Status(s)] },
	"ts":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
}).ParseFS(templates, "status.html.tmpl"))

// Server serves the admin endpoints.
type Server struct {
	Catalog catalog.Catalog
	Shards  map[string]store.Store
	// Ready checks the store and the bus; nil error means ready.
	Ready    func(ctx context.Context) error
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// Refresh is the status page's refresh interval (default 5s).
	Refresh time.Duration
}

// Status is the JSON of /api/status and the data of the status page.
type Status struct {
	GeneratedAt time.Time            `json:"generated_at"`
	Billers     []pump.BillerBacklog `json:"billers"`
	Failures    []Failure            `json:"recent_failures"`
	Error       string               `json:"error,omitempty"`
	Refresh     int                  `json:"-"`
}

// Failure is one recently failed item.
type Failure struct {
	MessageID string    `json:"message_id"`
	BillerID  string    `json:"biller"`
	Attempts  int       `json:"attempts"`
	Error     string    `json:"error"`
	FailedAt  time.Time `json:"failed_at"`
}

// Handler returns the router.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.Registry != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /api/status", s.apiStatus)
	mux.HandleFunc("GET /{$}", s.page)
	return mux
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.Ready != nil {
		if err := s.Ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", err)
			return
		}
	}
	fmt.Fprintln(w, "ready")
}

func (s *Server) status(ctx context.Context) Status {
	st := Status{GeneratedAt: time.Now().UTC(), Refresh: int(s.refresh().Seconds())}
	// Without Processed records: the page reloads itself every few seconds
	// in every operator's browser, and must not read the history each time.
	billers, err := pump.Backlog(ctx, s.Catalog, s.Shards, pump.BacklogParams{})
	st.Billers = billers
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	fails, err := pump.RecentFailures(ctx, s.Shards, 20)
	if err != nil {
		errs = append(errs, err)
	}
	for _, f := range fails {
		st.Failures = append(st.Failures, Failure{MessageID: f.MessageID(), BillerID: f.BillerID, Attempts: f.Attempts, Error: f.LastError, FailedAt: f.FailedAt})
	}
	if len(errs) > 0 {
		st.Error = errors.Join(errs...).Error()
	}
	return st
}

func (s *Server) refresh() time.Duration {
	if s.Refresh <= 0 {
		return 5 * time.Second
	}
	return s.Refresh
}

func (s *Server) apiStatus(w http.ResponseWriter, r *http.Request) {
	st := s.status(r.Context())
	w.Header().Set("Content-Type", "application/json")
	if st.Error != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(st) //nolint:errcheck // the client went away
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	st := s.status(r.Context())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := statusPage.Execute(w, st); err != nil && s.Logger != nil {
		s.Logger.Warn("render status page", "error", err)
	}
}

// Serve serves on ln until ctx is cancelled, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
