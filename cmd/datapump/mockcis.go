package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/datapump/datapump/internal/cis/mockcis"
	"github.com/datapump/datapump/internal/telemetry"
)

func mockCISCmd(env *cliEnv) *cobra.Command {
	var addr string
	var faults mockcis.Faults
	cmd := &cobra.Command{
		Use:   "mock-cis",
		Short: "Serve a mock CIS API that records every request and can inject faults",
		Long: `mock-cis accepts item deliveries on any POST path, records them (GET /_mock/requests,
GET /_mock/stats) and injects faults set by flags or at run time with PUT /_mock/faults.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := telemetry.NewLogger(env.stderr, "info", "json")
			if err != nil {
				return err
			}
			srv := mockcis.New(mockcis.Options{Faults: faults, Logger: logger})
			fmt.Fprintf(env.stdout, "mock CIS listening on %s\n", addr)
			return srv.ListenAndServe(cmd.Context(), addr)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:8090", "listen address")
	cmd.Flags().DurationVar(&faults.Latency, "latency", 0, "latency added to every request")
	cmd.Flags().Float64Var(&faults.Rate5xx, "rate-5xx", 0, "share of requests answered 503")
	cmd.Flags().Float64Var(&faults.Rate429, "rate-429", 0, "share of requests answered 429")
	cmd.Flags().Float64Var(&faults.RateTimeout, "rate-timeout", 0, "share of requests that hang before answering")
	cmd.Flags().DurationVar(&faults.TimeoutDelay, "timeout-delay", 0, "how long a hanging request hangs")
	cmd.Flags().Float64Var(&faults.RateReject, "rate-reject", 0, "share of requests rejected with 422")
	return cmd
}
