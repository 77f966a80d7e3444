package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/datapump/datapump/internal/app"
	"github.com/datapump/datapump/internal/config"
)

// ScalingPoint is one run of RunScaling: the items delivered with
// Processes item consumer processes.
type ScalingPoint struct {
	Processes int `json:"processes"`
	// ShardConns is each process's connection limit per shard: its share
	// of what one process would have.
	ShardConns int `json:"shard_conns_per_process"`
	Items      int `json:"items"`
	// Throughput's ElapsedS is from when every process was ready.
	Throughput
	// SpeedUp is ItemsPerS over the base run's (ScalingResult.BaseProcesses).
	SpeedUp float64 `json:"speedup"`
	// LogsKept is the directory holding the item consumer processes' logs
	// and configuration, kept when the CIS saw a duplicate (otherwise
	// removed with the run).
	LogsKept string `json:"logs_kept,omitempty"`
}

// ScalingResult is what RunScaling measured.
type ScalingResult struct {
	Items   int `json:"items"`
	Billers int `json:"billers"`
	Shards  int `json:"shards"`
	// Concurrency is each item consumer process's concurrency.
	Concurrency int `json:"concurrency_per_process"`
	// BaseProcesses is the run every SpeedUp is relative to: one process,
	// or the fewest measured when one was not.
	BaseProcesses int            `json:"base_processes"`
	Points        []ScalingPoint `json:"points"`
}

// Item consumer processes.
const (
	// childDrain is the item consumer processes' --drain-timeout.
	childDrain = 20 * time.Second
	// childExitWait is how long a process may take to exit after SIGTERM
	// before it is killed.
	childExitWait = childDrain + 10*time.Second
	// childLogTail is how much of a process's log an error quotes.
	childLogTail = 4096
	// minShardConns is the fewest connections to a shard a process gets.
	minShardConns = 2
)

// RunScaling measures the pump with each count of item consumer processes
// in processes, on PostgreSQL and the external NATS server only. Each count
// gets a fresh world, seeded as RunPump seeds it (a backlog: opts.InsertRate
// and opts.BigBillerItems are not used); the publisher and the biller
// consumer run in this process, and that many `datapump run --jobs
// item-consumer` processes of opts.Binary, each with its own owner and
// opts.Concurrency and its share of the shards' connections, run on the
// same schemas, server and topic prefix. Throughput counts from when every
// process is ready to the last delivery.
func RunScaling(ctx context.Context, opts Options, processes []int) (ScalingResult, error) {
	if err := opts.normalize(); err != nil {
		return ScalingResult{}, err
	}
	res := ScalingResult{Items: opts.Items, Billers: opts.Billers, Shards: opts.Shards, Concurrency: opts.Concurrency}
	if opts.Backend != BackendPostgres {
		return res, fmt.Errorf("scaling: backend %q: the item consumer processes share the databases and the bus, so it runs on %s only", opts.Backend, BackendPostgres)
	}
	if opts.Binary == "" {
		return res, errors.New("scaling: no datapump binary to start the item consumer processes from")
	}
	if len(processes) == 0 {
		return res, errors.New("scaling: no process counts")
	}
	for i, p := range processes {
		if p <= 0 {
			return res, fmt.Errorf("scaling: process count %d must be positive", p)
		}
		if slices.Contains(processes[:i], p) {
			return res, fmt.Errorf("scaling: process count %d given twice", p)
		}
	}
	opts.InsertRate, opts.BigBillerItems = 0, 0
	for _, p := range processes {
		point, err := scalingPoint(ctx, opts, p)
		if err != nil {
			return res, fmt.Errorf("scaling, %d item consumer process(es): %w", p, err)
		}
		res.Points = append(res.Points, point)
	}
	base := slices.MinFunc(res.Points, func(a, b ScalingPoint) int { return a.Processes - b.Processes })
	res.BaseProcesses = base.Processes
	for i := range res.Points {
		if base.ItemsPerS > 0 {
			res.Points[i].SpeedUp = res.Points[i].ItemsPerS / base.ItemsPerS
		}
	}
	return res, nil
}

func scalingPoint(ctx context.Context, opts Options, processes int) (ScalingPoint, error) {
	point := ScalingPoint{Processes: processes, Items: opts.Items}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	r, err := openPumpRun(ctx, opts)
	if err != nil {
		return point, err
	}
	defer r.Close()
	// The item subscriptions must exist before the first item message, and
	// the processes then find the topology made instead of racing to make it.
	if _, err := r.app.Provision(ctx); err != nil {
		return point, err
	}
	// A process that exits before the end cancels the run with its log.
	ctx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	child := r.cfg
	child.Shards = shardsShared(r.cfg.Shards, processes)
	point.ShardConns = child.Shards[0].MaxConns
	consumers, err := startItemConsumers(opts.Binary, child, r.dir, processes, abort)
	if err != nil {
		return point, err
	}
	defer consumers.Stop()
	if err := consumers.waitReady(ctx); err != nil {
		return point, err
	}
	if point.Throughput, err = r.run(ctx, []string{app.JobPublisher, app.JobBillerConsumer}, fmt.Sprintf("scaling ×%d: delivered to CIS", processes)); err != nil {
		return point, err
	}
	if err := consumers.Stop(); err != nil {
		return point, err
	}
	// A duplicate sent while the processes drained counts too.
	stats := r.mock.Stats()
	point.Duplicates, point.Resends = stats.Duplicates, stats.Resends
	if point.Duplicates > 0 {
		r.keepDir = true
		point.LogsKept = r.dir
	}
	return point, nil
}

// itemConsumers are `datapump run --jobs item-consumer` child processes.
// A background wait per process is owned by Stop, which waits for it.
type itemConsumers struct {
	procs    []*itemConsumer
	stopOnce sync.Once
	stopErr  error
}

// itemConsumer is one child process.
type itemConsumer struct {
	owner   string
	cmd     *exec.Cmd
	log     *os.File
	readyz  string
	exited  chan struct{}
	waitErr error // set before exited is closed
	mu      sync.Mutex
	stopped bool // Stop signalled it: its exit is expected
}

// startItemConsumers starts n processes of binary, each with cfg under its
// own owner and admin address, written to a file in dir (with its log).
// When a process exits before Stop, early is called with an error that
// quotes the end of its log.
func startItemConsumers(binary string, cfg config.Config, dir string, n int, early func(error)) (*itemConsumers, error) {
	ics := &itemConsumers{}
	for i := 1; i <= n; i++ {
		ic, err := startItemConsumer(binary, cfg, dir, fmt.Sprintf("%s-items-%d", cfg.Owner, i), early)
		if err != nil {
			ics.Stop()
			return nil, err
		}
		ics.procs = append(ics.procs, ic)
	}
	return ics, nil
}

func startItemConsumer(binary string, cfg config.Config, dir, owner string, early func(error)) (*itemConsumer, error) {
	addr, err := freeLocalAddr()
	if err != nil {
		return nil, err
	}
	cfg.Owner = owner
	cfg.HTTP.Addr = addr
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("item consumer %s config: %w", owner, err)
	}
	raw, err := config.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, owner+".yaml")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		return nil, fmt.Errorf("item consumer %s config: %w", owner, err)
	}
	log, err := os.Create(filepath.Join(dir, owner+".log"))
	if err != nil {
		return nil, fmt.Errorf("item consumer %s log: %w", owner, err)
	}
	cmd := exec.Command(binary, "run", "--config", cfgPath, "--jobs", app.JobItemConsumer, "--drain-timeout", childDrain.String())
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = childEnviron()
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start item consumer %s: %w", owner, err)
	}
	ic := &itemConsumer{owner: owner, cmd: cmd, log: log, readyz: "http://" + addr + "/readyz", exited: make(chan struct{})}
	go func() {
		ic.waitErr = cmd.Wait()
		close(ic.exited)
		ic.mu.Lock()
		expected := ic.stopped
		ic.mu.Unlock()
		if !expected {
			early(ic.exitError("exited early"))
		}
	}()
	return ic, nil
}

// shardsShared gives each of n processes its share of every shard's
// connections, so that the database sees as many item consumer
// connections whatever n is (and n processes of a full share each would
// pass a default max_connections of 100 from n = 3).
func shardsShared(shards []config.ShardConfig, n int) []config.ShardConfig {
	out := slices.Clone(shards)
	for i := range out {
		out[i].MaxConns = max(minShardConns, out[i].MaxConns/n)
	}
	return out
}

// childEnviron is this process's environment without DATAPUMP_* variables,
// so the written file is the child's whole configuration.
func childEnviron() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, config.EnvPrefix) })
}

// freeLocalAddr returns a loopback address with a port free just now.
func freeLocalAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitReady polls every process's /readyz until each answers 200, which
// it does once its item consumers have started.
func (ics *itemConsumers) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for _, ic := range ics.procs {
		for !ic.ready(ctx, client) {
			select {
			case <-ctx.Done():
				return fmt.Errorf("item consumer %s not ready: %w", ic.owner, context.Cause(ctx))
			case <-ic.exited:
				return ic.exitError("exited before it was ready")
			case <-tick.C:
			}
		}
	}
	return nil
}

func (ic *itemConsumer) ready(ctx context.Context, client *http.Client) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ic.readyz, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body) //nolint:errcheck // only the status matters
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Stop sends every process SIGTERM (which drains it), waits for each to
// exit, killing any still running after childExitWait, and reports a
// process that did not exit cleanly. It is idempotent.
func (ics *itemConsumers) Stop() error {
	ics.stopOnce.Do(func() {
		for _, ic := range ics.procs {
			ic.mu.Lock()
			ic.stopped = true
			ic.mu.Unlock()
			ic.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // it may have exited already
		}
		var errs []error
		deadline := time.Now().Add(childExitWait)
		for _, ic := range ics.procs {
			wait := time.NewTimer(time.Until(deadline))
			select {
			case <-ic.exited:
				wait.Stop()
			case <-wait.C:
				ic.cmd.Process.Kill() //nolint:errcheck // it may have exited already
				<-ic.exited
				errs = append(errs, ic.exitError(fmt.Sprintf("did not exit within %s of SIGTERM and was killed", childExitWait)))
				continue
			}
			if ic.waitErr != nil {
				errs = append(errs, ic.exitError("failed to drain"))
			}
		}
		for _, ic := range ics.procs {
			ic.log.Close()
		}
		ics.stopErr = errors.Join(errs...)
	})
	return ics.stopErr
}

// exitError says what happened to the process, with the end of its log.
func (ic *itemConsumer) exitError(what string) error {
	status := "running"
	select {
	case <-ic.exited:
		status = fmt.Sprint(ic.waitErr)
		if ic.waitErr == nil {
			status = "exit status 0"
		}
	default:
	}
	return fmt.Errorf("item consumer %s %s (%s); end of %s:\n%s", ic.owner, what, status, ic.log.Name(), logTail(ic.log.Name(), childLogTail))
}

// logTail returns up to the last n bytes of the file at path, from a line start.
func logTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	from := max(0, info.Size()-n)
	buf := make([]byte, info.Size()-from)
	if _, err := f.ReadAt(buf, from); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	tail := string(buf)
	if from > 0 {
		if i := strings.IndexByte(tail, '\n'); i >= 0 {
			tail = tail[i+1:]
		}
	}
	return strings.TrimRight(tail, "\n")
}
