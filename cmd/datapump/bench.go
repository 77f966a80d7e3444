package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/datapump/datapump/bench"
	"github.com/datapump/datapump/internal/telemetry"
)

// quickItems and quickBillers size `datapump bench --quick`.
const (
	quickItems   = 5000
	quickBillers = 20
)

func benchCmd(env *cliEnv) *cobra.Command {
	opts := bench.DefaultOptions()
	var quick, withRiver, withCeiling, polling, verbose bool
	repeat := 1
	histories := []int{10000, 1000000}
	var cpuProfile, memProfile string
	var fairness bool
	bigItems := 50000
	var scaling bool
	processes := []int{1, 2, 4}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the pump end to end against a mock CIS (no added latency unless --cis-latency)",
		Long: `bench loads work items across billers and shards, runs the publisher,
the biller consumer and the item consumers in this process against a mock
CIS (no added latency unless --cis-latency), and reports items per second, insert→CIS latency
and per-stage latency, as a table and as a final JSON line.

--backend embedded uses SQLite and an in-process NATS server; postgres uses
fresh schemas on --pg-dsn and the NATS server at --nats-url (with a unique
topic prefix), all removed afterwards.

--quick runs the pump on PostgreSQL and River on the same PostgreSQL with a
small number of items, and ends with the ratio as one JSON line.

--repeat N, with --river or --ceiling, runs the pump and its anchors N
times in turn and ends with every run's ratios and their medians as one
JSON line: on a shared machine one run's ratio moves with the machine.

--scaling runs the pump once per --processes count on PostgreSQL: the
publisher and the biller consumer in this process, the item consumers in
that many child processes of this binary (datapump run --jobs item-consumer,
--concurrency and an equal share of each shard's connections each), and reports items per second and the speed-up over one
process, as a table and as a final JSON line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Items <= 0 || opts.Billers <= 0 || opts.Shards <= 0 {
				return badInput("--items, --billers and --shards must be positive")
			}
			if opts.Backend != bench.BackendEmbedded && opts.Backend != bench.BackendPostgres {
				return badInput("--backend: want %s or %s", bench.BackendEmbedded, bench.BackendPostgres)
			}
			level := "error"
			if verbose {
				level = "info"
			}
			logger, err := telemetry.NewLogger(env.stderr, level, "text")
			if err != nil {
				return err
			}
			opts.Logger = logger
			if f, ok := env.stderr.(*os.File); ok && isTerminal(f) {
				opts.Progress = env.stderr
			}
			if quick {
				if !cmd.Flags().Changed("items") {
					opts.Items = quickItems
				}
				if !cmd.Flags().Changed("billers") {
					opts.Billers = quickBillers
				}
				opts.Backend = bench.BackendPostgres
				withRiver = true
			}
			if scaling {
				return runScaling(cmd, env.stdout, opts, processes)
			}
			if fairness {
				if !cmd.Flags().Changed("items") {
					opts.Items = 5000
				}
				if !cmd.Flags().Changed("billers") {
					opts.Billers = 50
				}
				return runFairness(cmd, env.stdout, opts, bigItems)
			}
			if polling {
				fmt.Fprintf(env.stdout, "datapump bench --polling: %d billers, %d pending items each, history %v processed records\n", opts.Billers, bench.PollingPendingPerBiller, histories)
				pr, err := bench.RunPolling(cmd.Context(), opts, histories)
				if err != nil {
					return err
				}
				printPollingResult(env.stdout, pr)
				return printJSON(env.stdout, pr)
			}
			if repeat < 1 {
				return badInput("--repeat must be at least 1")
			}
			if repeat > 1 && !withRiver && !withCeiling {
				return badInput("--repeat needs --river or --ceiling: it repeats a run with its anchors")
			}
			if repeat > 1 && (cpuProfile != "" || memProfile != "") {
				return badInput("--repeat: profile one run at a time (--cpuprofile, --memprofile)")
			}
			fmt.Fprintf(env.stdout, "datapump bench: %d items, %d billers, %d shards, backend %s, concurrency %d\n",
				opts.Items, opts.Billers, opts.Shards, opts.Backend, opts.Concurrency)
			var rivers []bench.RiverRatio
			var ceilings []bench.CeilingRatio
			for i := range repeat {
				if repeat > 1 {
					fmt.Fprintf(env.stdout, "run %d of %d\n", i+1, repeat)
				}
				a, err := runAnchored(cmd, env.stdout, opts, anchors{river: withRiver, ceiling: withCeiling, cpuProfile: cpuProfile, memProfile: memProfile})
				if err != nil {
					return err
				}
				if a.river != nil {
					rivers = append(rivers, *a.river)
				}
				if a.ceiling != nil {
					ceilings = append(ceilings, *a.ceiling)
				}
			}
			if repeat > 1 {
				return printJSON(env.stdout, bench.NewRepeated(repeat, rivers, ceilings))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Items, "items", opts.Items, "work items to load")
	f.IntVar(&opts.Billers, "billers", opts.Billers, "billers (all in poll mode)")
	f.IntVar(&opts.Shards, "shards", opts.Shards, "shard databases")
	f.StringVar(&opts.Backend, "backend", opts.Backend, "embedded (SQLite + in-process NATS) or postgres (with external NATS)")
	f.StringVar(&opts.PostgresDSN, "pg-dsn", opts.PostgresDSN, "PostgreSQL for the postgres backend and the anchors (fresh schemas, dropped afterwards)")
	f.StringVar(&opts.NATSURL, "nats-url", opts.NATSURL, "NATS server for the postgres backend (unique topic prefix, streams deleted afterwards)")
	f.IntVar(&opts.InsertRate, "insert-rate", 0, "write the pump's items at this many per second while the jobs run (0: all before they start)")
	f.IntVar(&opts.Concurrency, "concurrency", opts.Concurrency, "item consumer concurrency per item type")
	f.DurationVar(&opts.CISLatency, "cis-latency", 0, "how long the mock CIS takes to answer each request (as a real CIS API does)")
	f.DurationVar(&opts.Interval, "interval", 0, "publisher interval (default: the demo's 500ms)")
	f.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "give up a run after this long")
	f.BoolVar(&withRiver, "river", false, "then run River on the same PostgreSQL with the same work, and end with the ratio as JSON")
	f.BoolVar(&withCeiling, "ceiling", false, "then run the raw SQL ceiling on the same PostgreSQL and print pump/ceiling as JSON")
	f.IntVar(&repeat, "repeat", repeat, "with --river or --ceiling: run the pump and its anchors this many times in turn, and end with each run's ratios and their medians as JSON")
	f.BoolVar(&polling, "polling", false, "only time the pending scan and a biller claim with each --history size of processed records (PostgreSQL)")
	f.IntSliceVar(&histories, "history", histories, "processed control records already in the shard, for --polling")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the pump run (not the anchors) to this file")
	f.StringVar(&memProfile, "memprofile", "", "write the process's allocations up to the end of the pump run (its loading included, not the anchors) to this file, as a pprof allocs profile")
	f.BoolVar(&fairness, "fairness", false, "only compare the small billers' p99 with and without one big biller (--items over --billers, default 5000 over 50)")
	f.IntVar(&bigItems, "big-items", bigItems, "the big biller's items, for --fairness")
	f.BoolVar(&scaling, "scaling", false, "only measure items/s with each --processes count of item consumer processes (PostgreSQL)")
	f.IntSliceVar(&processes, "processes", processes, "item consumer processes, one run per count, for --scaling")
	f.BoolVar(&quick, "quick", false, "small run on PostgreSQL, pump and River, ending with the ratio as JSON")
	f.BoolVarP(&verbose, "verbose", "v", false, "log the jobs' work to stderr")
	return cmd
}

// anchors says what runAnchored runs beside the pump, and where it
// writes the pump run's profiles.
type anchors struct {
	river, ceiling         bool
	cpuProfile, memProfile string
}

// anchorRatios is what one runAnchored measured against its anchors (nil
// for an anchor it did not run).
type anchorRatios struct {
	river   *bench.RiverRatio
	ceiling *bench.CeilingRatio
}

// runAnchored runs the pump, then the ceiling and River if asked, printing
// each one's table and JSON line; the River ratio's line comes last.
func runAnchored(cmd *cobra.Command, w io.Writer, opts bench.Options, with anchors) (anchorRatios, error) {
	var out anchorRatios
	stopProfile, err := startProfiles(with.cpuProfile, with.memProfile)
	if err != nil {
		return out, err
	}
	res, err := bench.RunPump(cmd.Context(), opts)
	if perr := stopProfile(); perr != nil && err == nil {
		err = perr
	}
	if err != nil {
		return out, err
	}
	printPumpResult(w, res)
	if err := printJSON(w, res); err != nil {
		return out, err
	}
	if res.Duplicates > 0 {
		return out, fmt.Errorf("bench: %s", duplicatesSeen(res.Duplicates, res.Resends, duplicateAfter(res.Throughput)))
	}
	var ceiling float64
	if with.ceiling {
		cr, err := bench.RunCeiling(cmd.Context(), opts)
		if err != nil {
			return out, err
		}
		printCeilingResult(w, cr)
		ceiling = cr.ItemsPerS
		out.ceiling = &bench.CeilingRatio{PumpItemsPerS: res.ItemsPerS, CeilingItemsPerS: cr.ItemsPerS, Ratio: bench.Ratio(res.ItemsPerS, cr.ItemsPerS)}
		if err := printJSON(w, out.ceiling); err != nil {
			return out, err
		}
	}
	if !with.river {
		return out, nil
	}
	defaults, err := bench.RunRiver(cmd.Context(), opts, bench.RiverDefaults(opts))
	if err != nil {
		return out, err
	}
	printRiverResult(w, defaults)
	tuned, err := bench.RunRiver(cmd.Context(), opts, bench.RiverTuned(opts))
	if err != nil {
		return out, err
	}
	printRiverResult(w, tuned)
	rr := bench.NewRiverRatio(res.ItemsPerS, defaults, tuned, ceiling)
	out.river = &rr
	return out, printJSON(w, rr)
}

func printPumpResult(w io.Writer, r bench.PumpResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if r.InsertRate > 0 {
		fmt.Fprintf(tw, "pump (%s, inserting %d items/s, publisher interval %g ms)\t\n", r.Backend, r.InsertRate, r.IntervalMs)
	} else {
		fmt.Fprintf(tw, "pump (%s, all items written first, publisher interval %g ms)\t\n", r.Backend, r.IntervalMs)
	}
	fmt.Fprintf(tw, "  delivered\t%d of %d (%d duplicates, %d of them resends within one CIS call)\n", r.Delivered, r.Items+r.BigBillerItems, r.Duplicates, r.Resends)
	if r.Duplicates > 0 {
		fmt.Fprintf(tw, "  duplicates came\t%s\n", duplicateAfter(r.Throughput))
	}
	fmt.Fprintf(tw, "  elapsed\t%.2f s\n", r.ElapsedS)
	fmt.Fprintf(tw, "  throughput\t%.0f items/s\n", r.ItemsPerS)
	printCPU(tw, r.CPU)
	if f := r.Front; f != nil {
		fmt.Fprintf(tw, "  last item Queued\tafter %.2f s, %d delivered by then\n", f.AllQueuedS, f.DeliveredBefore)
		fmt.Fprintf(tw, "  item consumers alone\t%.0f items/s from then on\n", f.AfterItemsPerS)
	}
	fmt.Fprintf(tw, "  latency\tp50\tp95\tp99\n")
	var rows []latencyRow
	if r.BigBillerItems > 0 {
		rows = append(rows, latencyRow{"insert→CIS, small billers", r.SmallBillersInsertToCIS})
	}
	rows = append(rows, latencyRow{"insert→CIS", r.InsertToCIS}, latencyRow{"created→Queued", r.CreatedToQueued}, latencyRow{"Queued→Processed", r.QueuedToProcessed})
	if q, p := r.SmallBillersCreatedToQueued, r.SmallBillersQueuedToProcessed; q != nil && p != nil {
		rows = append(rows, latencyRow{"created→Queued, small billers", *q}, latencyRow{"Queued→Processed, small billers", *p})
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "  %s\t%.1f ms\t%.1f ms\t%.1f ms\n", row.name, row.l.P50ms, row.l.P95ms, row.l.P99ms)
	}
	tw.Flush()
}

// latencyRow is one line of a run's latency table.
type latencyRow struct {
	name string
	l    bench.Latency
}

func printRiverResult(w io.Writer, r bench.RiverResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	t := r.Tuning
	fmt.Fprintf(tw, "river %s (postgres, %d workers, fetch cooldown %s, poll %s)\t\n", t.Name, r.Workers, orRiverDefault(t.FetchCooldown), orRiverDefault(t.FetchPollInterval))
	fmt.Fprintf(tw, "  delivered\t%d of %d (%d duplicates)\n", r.Delivered, r.Jobs, r.Duplicates)
	fmt.Fprintf(tw, "  elapsed\t%.2f s\n", r.ElapsedS)
	fmt.Fprintf(tw, "  throughput\t%.0f jobs/s\n", r.JobsPerS)
	printCPU(tw, r.CPU)
	fmt.Fprintf(tw, "  insert→CIS\tp50 %.1f ms\tp95 %.1f ms\tp99 %.1f ms\n", r.InsertToCIS.P50ms, r.InsertToCIS.P95ms, r.InsertToCIS.P99ms)
	tw.Flush()
}

// orRiverDefault names a River client setting left at River's default.
func orRiverDefault(d time.Duration) string {
	if d == 0 {
		return "default"
	}
	return d.String()
}

// printCPU prints where a timed phase's CPU went, if it could be read.
func printCPU(w io.Writer, c *bench.CPU) {
	if c == nil {
		return
	}
	fmt.Fprintf(w, "  CPU used\t%.1f s: benchmark processes %.1f s, PostgreSQL %.1f s, NATS server %.1f s (%.0f %% of all cores)\n",
		c.TotalS, c.ProcessS, c.PostgresS, c.NATSS, 100*c.Busy)
}

func printJSON(w io.Writer, v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, string(line))
	return nil
}

func printCeilingResult(w io.Writer, r bench.CeilingResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "raw SQL ceiling (postgres, claims of %d, item batches of %d, %d in flight)\t\n", r.ClaimSize, r.ItemBatch, r.Workers)
	fmt.Fprintf(tw, "  processed\t%d of %d\n", r.Processed, r.Items)
	fmt.Fprintf(tw, "  elapsed\t%.2f s\n", r.ElapsedS)
	fmt.Fprintf(tw, "  throughput\t%.0f items/s\n", r.ItemsPerS)
	printCPU(tw, r.CPU)
	tw.Flush()
}

func printPollingResult(w io.Writer, r bench.PollingResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "history\tpending scan\tbiller claim\tfull sweep\tseeding\n")
	for _, p := range r.Points {
		fmt.Fprintf(tw, "%d\t%.2f ms\t%.2f ms\t%.2f ms\t%.1f s\n", p.History, p.PendingCountMs, p.ClaimMs, p.FullSweepMs, p.SeedS)
	}
	fmt.Fprintf(tw, "largest/smallest\t%.2f×\t%.2f×\t\t\n", r.PendingCountRatio, r.ClaimRatio)
	tw.Flush()
}

// startProfiles profiles the process's CPU into cpuPath and its
// allocations into memPath (nothing for an empty path) until the returned
// func is called.
func startProfiles(cpuPath, memPath string) (func() error, error) {
	stopCPU, err := startCPUProfile(cpuPath)
	if err != nil {
		return nil, err
	}
	if memPath == "" {
		return stopCPU, nil
	}
	return func() error {
		err := stopCPU()
		f, ferr := os.Create(memPath)
		if ferr != nil {
			return errors.Join(err, fmt.Errorf("memory profile: %w", ferr))
		}
		if werr := pprof.Lookup("allocs").WriteTo(f, 0); werr != nil {
			err = errors.Join(err, fmt.Errorf("memory profile: %w", werr))
		}
		return errors.Join(err, f.Close())
	}, nil
}

// startCPUProfile profiles the process into path (nothing when empty) until
// the returned func is called.
func startCPUProfile(path string) (func() error, error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

// runFairness runs the pump twice, without and then with one big biller,
// and ends with the small billers' p99 in both as JSON.
func runFairness(cmd *cobra.Command, w io.Writer, opts bench.Options, bigItems int) error {
	if bigItems <= 0 {
		return badInput("--big-items must be positive")
	}
	fmt.Fprintf(w, "datapump bench --fairness: %d items over %d billers, then again with one more biller holding %d items, backend %s\n", opts.Items, opts.Billers, bigItems, opts.Backend)
	alone, err := bench.RunPump(cmd.Context(), opts)
	if err != nil {
		return err
	}
	printPumpResult(w, alone)
	opts.BigBillerItems = bigItems
	withBig, err := bench.RunPump(cmd.Context(), opts)
	if err != nil {
		return err
	}
	printPumpResult(w, withBig)
	a, b := alone.SmallBillersInsertToCIS.P99ms, withBig.SmallBillersInsertToCIS.P99ms
	return printJSON(w, bench.FairnessRatio{SmallP99Alone: a, SmallP99WithBig: b, Ratio: bench.Ratio(b, a), Duplicates: alone.Duplicates + withBig.Duplicates})
}

// runScaling runs the pump once per count of item consumer processes, on
// PostgreSQL, and ends with every run and its speed-up as JSON.
func runScaling(cmd *cobra.Command, w io.Writer, opts bench.Options, processes []int) error {
	for _, other := range []string{"quick", "fairness", "polling", "river", "ceiling", "insert-rate", "cpuprofile", "memprofile"} {
		if cmd.Flags().Changed(other) {
			return badInput("--scaling does not go with --%s", other)
		}
	}
	if cmd.Flags().Changed("backend") && opts.Backend != bench.BackendPostgres {
		return badInput("--scaling runs on --backend %s only: the item consumer processes share its databases and NATS server", bench.BackendPostgres)
	}
	opts.Backend = bench.BackendPostgres
	for i, p := range processes {
		if p <= 0 || slices.Contains(processes[:i], p) {
			return badInput("--processes: want distinct positive counts, got %v", processes)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the datapump binary: %w", err)
	}
	opts.Binary = exe
	fmt.Fprintf(w, "datapump bench --scaling: %d items, %d billers, %d shards, backend %s, item consumer processes %v with concurrency %d each\n",
		opts.Items, opts.Billers, opts.Shards, opts.Backend, processes, opts.Concurrency)
	res, err := bench.RunScaling(cmd.Context(), opts, processes)
	if err != nil {
		return err
	}
	printScalingResult(w, res)
	if err := printJSON(w, res); err != nil {
		return err
	}
	return scalingDuplicates(res)
}

// scalingDuplicates fails a scaling run in which the CIS saw a duplicate,
// saying where the logs of the points that had one were kept.
func scalingDuplicates(res bench.ScalingResult) error {
	duplicates, resends := 0, 0
	var kept, when []string
	for _, p := range res.Points {
		duplicates += p.Duplicates
		resends += p.Resends
		if p.LogsKept != "" {
			kept = append(kept, p.LogsKept)
		}
		if p.Duplicates > 0 {
			when = append(when, fmt.Sprintf("%d processes: %s", p.Processes, duplicateAfter(p.Throughput)))
		}
	}
	if duplicates == 0 {
		return nil
	}
	return fmt.Errorf("bench: %s; the item consumer processes' logs are kept in %s",
		duplicatesSeen(duplicates, resends, strings.Join(when, "; ")), strings.Join(kept, ", "))
}

// duplicatesSeen says how many duplicates the CIS saw, how many of them
// were resends within one call, and when they came.
func duplicatesSeen(duplicates, resends int, when string) string {
	return fmt.Sprintf("the CIS saw %d duplicates (%d of them resends within one CIS call; %s)", duplicates, resends, when)
}

// duplicateAfter says how long after their item's first acceptance a
// run's duplicates came.
func duplicateAfter(t bench.Throughput) string {
	return fmt.Sprintf("%.0f to %.0f ms after the item's first acceptance", t.DuplicateAfterMinMs, t.DuplicateAfterMaxMs)
}

func printScalingResult(w io.Writer, r bench.ScalingResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "processes\tconns/shard each\tdelivered\tduplicates (resends)\telapsed\tthroughput\tspeed-up over %d\tCPU (benchmark/PostgreSQL/NATS)\n", r.BaseProcesses)
	for _, p := range r.Points {
		cpu := "-"
		if c := p.CPU; c != nil {
			cpu = fmt.Sprintf("%.1f s (%.1f/%.1f/%.1f)", c.TotalS, c.ProcessS, c.PostgresS, c.NATSS)
		}
		fmt.Fprintf(tw, "%d\t%d\t%d of %d\t%d (%d)\t%.2f s\t%.0f items/s\t%.2f×\t%s\n", p.Processes, p.ShardConns, p.Delivered, p.Items, p.Duplicates, p.Resends, p.ElapsedS, p.ItemsPerS, p.SpeedUp, cpu)
	}
	tw.Flush()
}
