package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/service"
	"github.com/datapump/datapump/internal/telemetry"
)

// Job names for `datapump run --jobs`.
const (
	JobPublisher      = "publisher"
	JobBillerConsumer = "biller-consumer"
	JobItemConsumer   = "item-consumer"
)

// AllJobs lists every job.
var AllJobs = []string{JobPublisher, JobBillerConsumer, JobItemConsumer}

// ParseJobs parses a comma-separated job list.
func ParseJobs(s string) ([]string, error) {
	var jobs []string
	for _, j := range strings.Split(s, ",") {
		j = strings.TrimSpace(j)
		if j == "" {
			continue
		}
		if !slices.Contains(AllJobs, j) {
			return nil, fmt.Errorf("unknown job %q (want %s)", j, strings.Join(AllJobs, ", "))
		}
		if !slices.Contains(jobs, j) {
			jobs = append(jobs, j)
		}
	}
	if len(jobs) == 0 {
		return nil, errors.New("no job given")
	}
	return jobs, nil
}

// Runner runs the chosen jobs until Stop.
type Runner struct {
	// AdminAddr is the admin server's address once started, if any.
	AdminAddr string
	// ItemTypes, when set before Start, limits the item consumers to these types.
	ItemTypes []string

	app       *App
	jobs      []string
	events    pump.Events
	publisher *pump.Publisher
	loops     []*service.Loop
	refresher *telemetry.BacklogRefresher
}

// NewRunner builds the jobs. The bus must be open.
func (a *App) NewRunner(jobs []string, events pump.Events) (*Runner, error) {
	r := &Runner{app: a, jobs: jobs, events: events}
	return r, nil
}

// Start provisions the topics and subscriptions and starts every job.
func (r *Runner) Start(ctx context.Context) error {
	a := r.app
	if _, err := a.Provision(ctx); err != nil {
		return err
	}
	deps := a.Deps(r.events)
	cfg := a.Config
	catalogTTL := cfg.Publisher.Interval
	if slices.Contains(r.jobs, JobPublisher) {
		p, err := pump.NewPublisher(deps, pump.PublisherConfig{
			Owner: cfg.Owner, Interval: cfg.Publisher.Interval, LeaseTTL: cfg.Publisher.LeaseTTL,
			StuckAfter: cfg.Publisher.StuckAfter, RescueBatch: cfg.Publisher.RescueBatch, ReconcileAfter: cfg.Publisher.ReconcileAfter,
			WatermarkLag: cfg.Publisher.WatermarkLag, FullSweepEvery: cfg.Publisher.FullSweepEvery,
		})
		if err != nil {
			return err
		}
		if err := p.Start(ctx); err != nil {
			return err
		}
		r.publisher = p
	}
	renew := cfg.Bus.LockDuration / 3
	if slices.Contains(r.jobs, JobBillerConsumer) {
		bc, err := pump.NewBillerConsumer(deps, pump.BillerConsumerConfig{
			Owner: cfg.Owner, Batch: cfg.BillerConsumer.Batch, MaxItemsPerMessage: cfg.BillerConsumer.MaxItemsPerMessage,
			TimeBudget: cfg.BillerConsumer.TimeBudget, RetryDelay: cfg.BillerConsumer.RetryDelay, CatalogTTL: catalogTTL,
		})
		if err != nil {
			return err
		}
		if err := r.receive(ctx, bc.Topic(), pump.BillerSubscription, bus.ReceiveOptions{Concurrency: cfg.BillerConsumer.Concurrency, RenewEvery: renew}, bc.Handle); err != nil {
			return err
		}
	}
	if slices.Contains(r.jobs, JobItemConsumer) {
		for _, t := range a.Items.Types() {
			if len(r.ItemTypes) > 0 && !slices.Contains(r.ItemTypes, t.Name) {
				continue
			}
			ic, err := pump.NewItemConsumer(deps, t, pump.ItemConsumerConfig{
				Owner: cfg.Owner, Lease: cfg.ItemConsumer.Lease, MaxAttempts: cfg.ItemConsumer.MaxAttempts,
				RetryInitial: cfg.ItemConsumer.RetryInitial, RetryMax: cfg.ItemConsumer.RetryMax, CatalogTTL: catalogTTL,
				Batch: cfg.ItemConsumer.Batch,
			})
			if err != nil {
				return err
			}
			if err := r.receive(ctx, ic.Topic(), pump.ItemSubscription, bus.ReceiveOptions{Concurrency: cfg.ItemConsumer.Concurrency, RenewEvery: renew}, ic.Handle); err != nil {
				return err
			}
		}
	}
	if cfg.HTTP.Addr != "" {
		if err := r.serveAdmin(ctx, cfg.HTTP.Addr); err != nil {
			return err
		}
	}
	a.Logger.Info("jobs started", "jobs", strings.Join(r.jobs, ","), "owner", cfg.Owner)
	return nil
}

// serveAdmin serves /healthz, /readyz, /metrics and the status page, and
// keeps the backlog gauges fresh.
func (r *Runner) serveAdmin(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin server: %w", err)
	}
	r.AdminAddr = ln.Addr().String()
	srv := r.app.Admin()
	l := &service.Loop{}
	r.loops = append(r.loops, l)
	if err := l.Start(ctx, func(ctx context.Context) error { return srv.Serve(ctx, ln) }); err != nil {
		return err
	}
	r.refresher = &telemetry.BacklogRefresher{M: r.app.Metrics, Read: r.app.Backlog, Every: max(r.app.Config.Publisher.Interval, time.Second), Logger: r.app.Logger}
	return r.refresher.Start(ctx)
}

func (r *Runner) receive(ctx context.Context, topic, sub string, opts bus.ReceiveOptions, h bus.Handler) error {
	l := &service.Loop{}
	r.loops = append(r.loops, l)
	return l.Start(ctx, func(ctx context.Context) error {
		for {
			err := r.app.Bus.Receive(ctx, topic, sub, opts, h)
			if ctx.Err() != nil {
				return nil
			}
			r.app.Logger.Error("receive loop ended; restarting", "topic", topic, "subscription", sub, "error", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
	})
}

// Stop stops taking messages, lets in-flight handlers finish, and stops
// the publisher (releasing its lease).
func (r *Runner) Stop() error {
	var errs []error
	if r.publisher != nil {
		errs = append(errs, r.publisher.Stop())
	}
	if r.refresher != nil {
		errs = append(errs, r.refresher.Stop())
	}
	for _, l := range r.loops {
		errs = append(errs, l.Stop())
	}
	return errors.Join(errs...)
}
