package main

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/datapump/datapump/internal/catalog"
)

func billersCmd(env *cliEnv) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "billers",
		Short: "List billers or set a biller's toggle mode (off, poll, direct)",
	}
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	list := &cobra.Command{
		Use:   "list",
		Short: "List billers with their shard, mode and cut-over",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := env.openApp(cmd.Context())
			if err != nil {
				return err
			}
			defer a.Close()
			bs, err := a.Catalog.BillerList(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if bs == nil {
					bs = []catalog.Biller{}
				}
				return env.printJSON(bs)
			}
			tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "BILLER\tSHARD\tMODE\tCUTOVER\tCIS")
			for _, b := range bs {
				cut := "-"
				if !b.CutoverAt.IsZero() {
					cut = b.CutoverAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.ID, b.Shard, b.Mode, cut, b.CIS.BaseURL)
			}
			return tw.Flush()
		},
	}
	setMode := &cobra.Command{
		Use:   "set-mode BILLER off|poll|direct",
		Short: "Change a biller's toggle; moving it to poll or direct records the cut-over watermark",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			mode, err := catalog.ParseMode(args[1])
			if err != nil {
				return usageError{err}
			}
			a, err := env.openApp(cmd.Context())
			if err != nil {
				return err
			}
			defer a.Close()
			b, err := a.Catalog.BillerSetMode(cmd.Context(), catalog.SetModeParams{BillerID: args[0], Mode: mode})
			if errors.Is(err, catalog.ErrBillerNotFound) || errors.Is(err, catalog.ErrReadOnly) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			if asJSON {
				return env.printJSON(b)
			}
			fmt.Fprintf(env.stdout, "biller %s is now %s (cut-over %s)\n", b.ID, b.Mode, b.CutoverAt.UTC().Format(time.RFC3339Nano))
			return nil
		},
	}
	cmd.AddCommand(list, setMode)
	return cmd
}
