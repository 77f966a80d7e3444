package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/datapump/datapump/internal/app"
)

func runCmd(env *cliEnv) *cobra.Command {
	var jobs string
	var itemTypes []string
	var drain time.Duration
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the publisher, biller consumer and item consumers against the configured databases and bus",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			selected, err := app.ParseJobs(jobs)
			if err != nil {
				return usageError{err}
			}
			cfg, logger, err := env.loadConfig()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			a, err := app.Open(ctx, cfg, logger)
			if err != nil {
				return err
			}
			defer a.Close()
			if err := a.OpenBus(ctx); err != nil {
				return err
			}
			if len(itemTypes) > 0 {
				for _, t := range itemTypes {
					if _, err := a.Items.Get(t); err != nil {
						return usageError{fmt.Errorf("--item-types: %w", err)}
					}
				}
			}
			r, err := a.NewRunner(selected, nil)
			if err != nil {
				return err
			}
			// The jobs run on their own context: the first signal cancels
			// ctx, which starts the drain below; a second one aborts.
			jobsCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
			defer cancelJobs()
			r.ItemTypes = itemTypes
			if err := r.Start(jobsCtx); err != nil {
				return err
			}
			<-ctx.Done()
			env.stopSignals()
			logger.Info("stopping: no new messages; finishing in-flight ones", "deadline", drain.String())
			done := make(chan error, 1)
			go func() { done <- r.Stop() }()
			select {
			case err := <-done:
				return err
			case <-time.After(drain):
				cancelJobs()
				return fmt.Errorf("drain deadline %s passed; in-flight messages abandoned", drain)
			}
		},
	}
	cmd.Flags().StringVar(&jobs, "jobs", strings.Join(app.AllJobs, ","), "jobs to run: "+strings.Join(app.AllJobs, ", "))
	cmd.Flags().StringSliceVar(&itemTypes, "item-types", nil, "item consumer: only these item types (default: all); one Deployment per type scales on its own subscription")
	cmd.Flags().DurationVar(&drain, "drain-timeout", 30*time.Second, "how long to let in-flight messages finish on shutdown")
	return cmd
}

func migrateCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the pump's control tables (never the source tables)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, logger, err := env.loadConfig()
			if err != nil {
				return err
			}
			a, err := app.Open(cmd.Context(), cfg, logger)
			if err != nil {
				return err
			}
			defer a.Close()
			if err := a.Migrate(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "migrated %d shard(s) and the catalog\n", len(a.Shards))
			return nil
		},
	}
}
