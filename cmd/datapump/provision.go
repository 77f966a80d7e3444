package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/datapump/datapump/internal/app"
	"github.com/datapump/datapump/internal/config"
)

func provisionCmd(env *cliEnv) *cobra.Command {
	var dryRun, asJSON bool
	cmd := &cobra.Command{
		Use:   "provision",
		Short: "Create or update the topics and subscriptions (duplicate detection, lock duration, max deliveries, dead-lettering)",
		Long: `provision creates, idempotently, the biller topic and one topic per item type, with
duplicate detection over bus.duplicate_window, and their subscriptions with
bus.max_deliveries, bus.lock_duration and dead-lettering. On NATS JetStream a
topic is a stream and a subscription a durable consumer. --dry-run prints the
plan and connects to nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, logger, err := env.loadConfig()
			if err != nil {
				return err
			}
			plan, err := app.ProvisionPlan(cfg)
			if err != nil {
				return usageError{err}
			}
			if dryRun {
				if asJSON {
					return env.printJSON(plan)
				}
				printPlan(env, cfg, plan)
				return nil
			}
			a := &app.App{Config: cfg, Logger: logger}
			reg, err := cfg.Registry()
			if err != nil {
				return usageError{err}
			}
			a.Items = reg
			if err := a.OpenBus(cmd.Context()); err != nil {
				return err
			}
			defer a.Close()
			res, err := a.Provision(cmd.Context())
			if asJSON {
				if jerr := env.printJSON(res); jerr != nil {
					return jerr
				}
			} else {
				tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
				for _, r := range res {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Kind, r.Name, r.Change)
				}
				tw.Flush()
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan; change nothing")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printPlan(env *cliEnv, cfg config.Config, plan app.Plan) {
	fmt.Fprintf(env.stdout, "plan for bus %s (dry run: nothing changed)\n", cfg.Bus.Driver)
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	for _, t := range plan.Topics {
		fmt.Fprintf(tw, "topic\t%s%s\tduplicate detection on, window %s\n", cfg.Bus.TopicPrefix, t.Name, t.DuplicateWindow)
	}
	for _, s := range plan.Subscriptions {
		fmt.Fprintf(tw, "subscription\t%s%s/%s\tmax deliveries %d, lock duration %s, dead-letter on expiration, dead-letter after max deliveries\n",
			cfg.Bus.TopicPrefix, s.Topic, s.Name, s.MaxDeliveries, s.LockDuration)
	}
	tw.Flush()
}
