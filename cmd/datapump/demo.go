package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/datapump/datapump/internal/demo"
	"github.com/datapump/datapump/internal/telemetry"
)

func demoCmd(env *cliEnv) *cobra.Command {
	opts := demo.DefaultOptions()
	var summaryJSON, verbose bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole pump on embedded SQLite, NATS and a mock CIS with seeded billers and items",
		Long: `demo needs no configuration and no services. It creates SQLite shard
databases in a temporary folder, a catalog of billers (every fifth one off,
owned by the old pump), starts an in-process NATS JetStream server and a mock
CIS, writes work items the way the source applications would, runs the
publisher, the biller consumer and the item consumers in this process, and
reports what reached the CIS.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Billers <= 0 || opts.Items <= 0 || opts.Shards <= 0 {
				return badInput("--billers, --items and --shards must be positive")
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
			} else {
				opts.ProgressLines = env.stderr
			}
			fmt.Fprintf(env.stdout, "datapump demo: %d billers on %d SQLite shards, %d work items, embedded NATS, mock CIS\n", opts.Billers, opts.Shards, opts.Items)
			sum, err := demo.Run(cmd.Context(), opts)
			printSummary(env.stdout, sum)
			if summaryJSON {
				line, jerr := json.Marshal(sum)
				if jerr != nil {
					return jerr
				}
				fmt.Fprintln(env.stdout, string(line))
			}
			if err != nil {
				return err
			}
			if sum.Lost > 0 || sum.Duplicates > 0 {
				return fmt.Errorf("demo finished with %d lost and %d duplicate items", sum.Lost, sum.Duplicates)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&opts.Billers, "billers", opts.Billers, "number of billers (every fifth is off)")
	cmd.Flags().IntVar(&opts.Items, "items", opts.Items, "number of work items")
	cmd.Flags().IntVar(&opts.Shards, "shards", opts.Shards, "number of SQLite shard databases")
	cmd.Flags().IntVar(&opts.InsertRate, "insert-rate", opts.InsertRate, "items per second the simulated applications write")
	cmd.Flags().StringVar(&opts.Dir, "dir", "", "keep the databases in this folder (default: a temporary folder, removed)")
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", opts.Timeout, "give up after this long")
	cmd.Flags().StringVar(&opts.HTTPAddr, "http", "", "serve /metrics, /healthz, /readyz and the status page on this address while the demo runs")
	cmd.Flags().BoolVar(&summaryJSON, "summary-json", false, "end the output with one JSON line of the summary")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "log the jobs' work to stderr")
	return cmd
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func printSummary(w io.Writer, s demo.Summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSummary")
	fmt.Fprintf(tw, "  billers\t%d (%d poll, %d off) on %d shards\n", s.Billers, s.PollBillers, s.OffBillers, s.Shards)
	fmt.Fprintf(tw, "  work items written\t%d (%d of poll billers, %d of off billers)\n", s.Items, s.PollItems, s.OffItems)
	fmt.Fprintf(tw, "  delivered to CIS\t%d of %d\n", s.Delivered, s.PollItems)
	fmt.Fprintf(tw, "  duplicates seen by CIS\t%d\n", s.Duplicates)
	fmt.Fprintf(tw, "  lost\t%d\n", s.Lost)
	fmt.Fprintf(tw, "  failed (kept as Failed)\t%d\n", s.Failed)
	fmt.Fprintf(tw, "  off billers' items untouched\t%d of %d\n", s.UntouchedOff, s.OffItems)
	fmt.Fprintf(tw, "  CIS requests\t%d\n", s.CISRequests)
	fmt.Fprintf(tw, "  insert→CIS latency\tp50 %.0f ms, p99 %.0f ms\n", s.P50ms, s.P99ms)
	fmt.Fprintf(tw, "  elapsed\t%.1f s (%.0f items/s)\n", s.ElapsedS, s.ItemsPerS)
	tw.Flush()
}
