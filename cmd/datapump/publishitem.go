package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/datapump/datapump/internal/app"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/producer"
)

func publishItemCmd(env *cliEnv) *cobra.Command {
	var it producer.Item
	var createdAt string
	cmd := &cobra.Command{
		Use:   "publish-item",
		Short: "Announce one work item directly, as a Phase Next source application would",
		Long: `publish-item builds the item message of the message contract (deterministic
MessageID shard:itemType:itemId, origin direct), validates it against the
published JSON Schema and publishes it to the item type's topic. The item
consumer claims it by inserting its control record.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if it.CreatedAt, err = parseTime("--created-at", createdAt); err != nil {
				return err
			}
			cfg, logger, err := env.loadConfig()
			if err != nil {
				return err
			}
			reg, err := cfg.Registry()
			if err != nil {
				return usageError{err}
			}
			topics := map[string]string{}
			for _, t := range reg.Types() {
				topics[t.Name] = t.Topic
			}
			msg, err := producer.Build(it, topics)
			if err != nil {
				return usageError{err}
			}
			if !shardConfigured(cfg.Shards, it.Shard) {
				return badInput("--shard: %q is not a configured shard", it.Shard)
			}
			a := &app.App{Config: cfg, Logger: logger, Items: reg}
			if err := a.OpenBus(cmd.Context()); err != nil {
				return err
			}
			defer a.Close()
			if err := producer.NewWithBus(a.Bus, topics).Publish(cmd.Context(), it); err != nil {
				if errors.Is(err, producer.ErrInvalidItem) {
					return usageError{err}
				}
				return err
			}
			fmt.Fprintf(env.stdout, "published %s to %s\n", msg.ID, msg.Topic)
			return nil
		},
	}
	cmd.Flags().StringVar(&it.Shard, "shard", "", "shard that holds the item's row")
	cmd.Flags().StringVar(&it.ItemType, "item-type", "", "item type (payment, paperless, …)")
	cmd.Flags().Int64Var(&it.ItemID, "id", 0, "the row's primary key")
	cmd.Flags().StringVar(&it.BillerID, "biller", "", "biller id")
	cmd.Flags().StringVar(&createdAt, "created-at", "", "when the row was written (RFC 3339; optional)")
	return cmd
}

func shardConfigured(shards []config.ShardConfig, name string) bool {
	for _, s := range shards {
		if s.Name == name {
			return true
		}
	}
	return false
}
