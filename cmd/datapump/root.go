package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/telemetry"
)

// Exit codes.
const (
	exitOK       = 0
	exitFailure  = 1
	exitBadInput = 2
)

// usageError marks bad input from the user (flags, config, arguments): exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func badInput(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// run builds the command tree and runs it. stopSignals restores default
// signal handling after the first signal, so a second SIGTERM aborts.
func run(ctx context.Context, stopSignals func(), args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:           "datapump",
		Short:         "Move billing work items from biller shard databases to topics and on to each biller's CIS, exactly once",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	env := &cliEnv{stdout: stdout, stderr: stderr, stopSignals: stopSignals}
	root.PersistentFlags().StringVar(&env.configPath, "config", "", "configuration file (YAML); DATAPUMP_* variables override it")
	root.AddCommand(
		demoCmd(env),
		runCmd(env),
		migrateCmd(env),
		mockCISCmd(env),
		billersCmd(env),
		statusCmd(env),
		inspectCmd(env),
		retryCmd(env),
		provisionCmd(env),
		publishItemCmd(env),
		benchCmd(env),
	)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "error:", err)
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return exitBadInput
	}
	return exitFailure
}

func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// cliEnv is what every command shares.
type cliEnv struct {
	configPath  string
	stdout      io.Writer
	stderr      io.Writer
	stopSignals func()
}

// loadConfig loads and validates the configuration; errors are bad input.
func (e *cliEnv) loadConfig() (config.Config, *slog.Logger, error) {
	if e.configPath == "" {
		return config.Config{}, nil, badInput("--config is required")
	}
	cfg, err := config.Load(e.configPath, nil)
	if err != nil {
		return cfg, nil, usageError{err}
	}
	logger, err := telemetry.NewLogger(e.stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return cfg, nil, usageError{err}
	}
	return cfg, logger, nil
}
