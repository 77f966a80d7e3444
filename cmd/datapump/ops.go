package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/datapump/datapump/internal/app"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
)

// openApp loads the config and opens the databases (not the bus).
func (e *cliEnv) openApp(ctx context.Context) (*app.App, error) {
	cfg, logger, err := e.loadConfig()
	if err != nil {
		return nil, err
	}
	return app.Open(ctx, cfg, logger)
}

func (e *cliEnv) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func statusCmd(env *cliEnv) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Backlog per biller and status across all shards, oldest pending age, failed count",
		Long: "Counts every control record, Processed included, so that its PROCESSED column is true: on a long history " +
			"this reads each shard's whole control table. The status page and the backlog gauges leave Processed out.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := env.openApp(cmd.Context())
			if err != nil {
				return err
			}
			defer a.Close()
			// An operator's one-off look: its PROCESSED column may read the history.
			billers, err := pump.Backlog(cmd.Context(), a.Catalog, a.Shards, pump.BacklogParams{WithProcessed: true})
			if err != nil {
				return err
			}
			if asJSON {
				if billers == nil {
					billers = []pump.BillerBacklog{}
				}
				return env.printJSON(billers)
			}
			tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "BILLER\tSHARD\tMODE\tPENDING\tOLDEST PENDING\tFETCHED\tQUEUED\tPROCESSING\tPROCESSED\tFAILED\tSKIPPED\t")
			for _, b := range billers {
				age := "-"
				if b.OldestPendingAge > 0 {
					age = b.OldestPendingAge.Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", b.BillerID, b.Shard, b.Mode, b.Pending, age,
					b.ByStatus[store.StatusFetched], b.ByStatus[store.StatusQueued], b.ByStatus[store.StatusProcessing],
					b.ByStatus[store.StatusProcessed], b.ByStatus[store.StatusFailed], b.ByStatus[store.StatusSkipped])
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// inspection is what `inspect` prints.
type inspection struct {
	MessageID  string        `json:"message_id"`
	Shard      string        `json:"shard"`
	Control    store.Control `json:"control"`
	BillerMode catalog.Mode  `json:"biller_mode"`
	Cutover    time.Time     `json:"biller_cutover"`
}

func inspectCmd(env *cliEnv) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect ITEM",
		Short: "Show an item's control record: status, timestamps per stage, attempts, last error, message id, biller toggle",
		Long:  "ITEM is the item's message id, shard:itemType:itemId (for example shard1:payment:42).",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			shard, typ, id, err := pump.ParseItemMessageID(args[0])
			if err != nil {
				return usageError{err}
			}
			a, err := env.openApp(cmd.Context())
			if err != nil {
				return err
			}
			defer a.Close()
			st, ok := a.Shards[shard]
			if !ok {
				return badInput("unknown shard %q in %s", shard, args[0])
			}
			if _, err := a.Items.Get(typ); err != nil {
				return usageError{err}
			}
			key := store.ItemKey{ItemType: typ, ItemID: id}
			c, err := st.ControlGet(cmd.Context(), key)
			if errors.Is(err, store.ErrNotFound) {
				src, serr := st.ItemSource(cmd.Context(), key)
				if serr == nil {
					return badInput("item %s has no control record yet: the source row exists (biller %s, created %s); it is pending or its biller is not on this pump", args[0], src.BillerID, src.CreatedAt.UTC().Format(time.RFC3339))
				}
				return badInput("item %s not found", args[0])
			}
			if err != nil {
				return err
			}
			in := inspection{MessageID: pump.ItemMessageID(shard, typ, id), Shard: shard, Control: c}
			if b, err := a.Catalog.BillerGet(cmd.Context(), c.BillerID); err == nil {
				in.BillerMode, in.Cutover = b.Mode, b.CutoverAt
			}
			if asJSON {
				return env.printJSON(in)
			}
			tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
			row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
			ts := func(t time.Time) string {
				if t.IsZero() {
					return "-"
				}
				return t.UTC().Format(time.RFC3339Nano)
			}
			row("message id", in.MessageID)
			row("status", c.Status)
			row("biller", fmt.Sprintf("%s (mode %s, cut-over %s)", c.BillerID, in.BillerMode, ts(in.Cutover)))
			row("origin", c.Origin)
			row("attempts", c.Attempts)
			row("version", c.Version)
			row("owner", c.Owner)
			row("lease until", ts(c.LeaseUntil))
			row("next attempt", ts(c.NextAttemptAt))
			row("last error", c.LastError)
			row("source created", ts(c.SourceCreatedAt))
			row("fetched", ts(c.FetchedAt))
			row("queued", ts(c.QueuedAt))
			row("processing", ts(c.ProcessingAt))
			row("processed", ts(c.ProcessedAt))
			row("failed", ts(c.FailedAt))
			row("updated", ts(c.UpdatedAt))
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func retryCmd(env *cliEnv) *cobra.Command {
	var asJSON, dryRun bool
	var biller, itemType, since, until string
	var ids []string
	var limit int
	cmd := &cobra.Command{
		Use:   "retry",
		Short: "Move Failed items back to Queued (by biller, item type, time range or ids) and send them again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p pump.RetryParams
			p.BillerID, p.ItemType, p.DryRun, p.Limit, p.Items = biller, itemType, dryRun, limit, ids
			var err error
			if p.FailedFrom, err = parseTime("--since", since); err != nil {
				return err
			}
			if p.FailedTo, err = parseTime("--until", until); err != nil {
				return err
			}
			if biller == "" && itemType == "" && since == "" && until == "" && len(ids) == 0 {
				return badInput("name what to retry: --biller, --item-type, --since/--until or --ids")
			}
			ctx := cmd.Context()
			a, err := env.openApp(ctx)
			if err != nil {
				return err
			}
			defer a.Close()
			if biller != "" {
				if _, err := a.Catalog.BillerGet(ctx, biller); err != nil {
					if errors.Is(err, catalog.ErrBillerNotFound) {
						return usageError{err}
					}
					return err
				}
			}
			if itemType != "" {
				if _, err := a.Items.Get(itemType); err != nil {
					return usageError{err}
				}
			}
			for _, id := range ids {
				shard, _, _, err := pump.ParseItemMessageID(id)
				if err != nil {
					return usageError{err}
				}
				if _, ok := a.Shards[shard]; !ok {
					return badInput("unknown shard %q in %s", shard, id)
				}
			}
			if !dryRun {
				if err := a.OpenBus(ctx); err != nil {
					return err
				}
			}
			retried, err := pump.Retry(ctx, a.Deps(nil), p)
			if asJSON {
				if retried == nil {
					retried = []pump.Retried{}
				}
				if jerr := env.printJSON(retried); jerr != nil {
					return jerr
				}
			} else {
				verb := "retried"
				if dryRun {
					verb = "would retry"
				}
				for _, r := range retried {
					fmt.Fprintf(env.stdout, "%s %s (biller %s, last error: %s)\n", verb, pump.ItemMessageID(r.Shard, r.ItemType, r.ItemID), r.BillerID, r.LastError)
				}
				fmt.Fprintf(env.stdout, "%s %d item(s)\n", verb, len(retried))
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "show what would be retried; change nothing")
	cmd.Flags().StringVar(&biller, "biller", "", "only this biller")
	cmd.Flags().StringVar(&itemType, "item-type", "", "only this item type")
	cmd.Flags().StringVar(&since, "since", "", "only items failed at or after this time (RFC 3339)")
	cmd.Flags().StringVar(&until, "until", "", "only items failed before this time (RFC 3339)")
	cmd.Flags().StringSliceVar(&ids, "ids", nil, "only these items (shard:itemType:itemId, comma-separated)")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many items per shard (0: no limit)")
	return cmd
}

func parseTime(flag, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(v))
	if err != nil {
		return time.Time{}, badInput("%s: %q is not an RFC 3339 time", flag, v)
	}
	return t, nil
}
