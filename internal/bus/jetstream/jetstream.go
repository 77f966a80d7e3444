package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/datapump/datapump/internal/bus"
)

// Config configures Open.
type Config struct {
	// URL of an external NATS server or cluster (comma-separated URLs).
	// Empty starts an embedded server in this process.
	URL string
	// Embedded configures the embedded server; ignored when URL is set.
	Embedded EmbeddedConfig
	// Logger receives connection events and the embedded server's warnings
	// and errors. Nil discards them.
	Logger *slog.Logger
	// ConnectName names the connection on the server (shown by monitoring).
	ConnectName string
	// Replicas is the replica count of the streams this adapter creates on
	// a clustered server (1 when zero).
	Replicas int
}

// EmbeddedConfig configures the embedded NATS server.
type EmbeddedConfig struct {
	// StoreDir is the JetStream storage directory. Empty uses a temporary
	// directory that Close removes.
	StoreDir string
	// SyncAlways fsyncs every write (the server's sync_interval: always)
	// instead of every two minutes, at a cost in publish throughput.
	SyncAlways bool
	// Listen makes the server accept connections on Host:Port as well, so
	// other processes can share it (see Bus.ClientURL). Without it the
	// server is reachable only in-process.
	Listen bool
	// Host to listen on; empty means 127.0.0.1.
	Host string
	// Port to listen on; zero picks a free port.
	Port int
}

// Bus is a bus.Bus on NATS JetStream.
type Bus struct {
	log      *slog.Logger
	nc       *nats.Conn
	js       jetstream.JetStream
	srv      *server.Server // nil with an external server
	tempDir  string         // removed on Close when set
	url      string
	replicas int

	closed     atomic.Bool
	life       context.Context // cancelled by Close, stops running Receives
	endLife    context.CancelFunc
	closeOnce  sync.Once
	closeErr   error
	connClosed chan struct{}
}

var _ bus.Bus = (*Bus)(nil)

// Open connects to the server in cfg.URL, or starts an embedded one, and
// returns a ready Bus. ctx bounds the start and the connection.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	b := &Bus{
		log:        cfg.Logger,
		url:        cfg.URL,
		replicas:   max(cfg.Replicas, 1),
		connClosed: make(chan struct{}),
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	b.life, b.endLife = context.WithCancel(context.Background())
	b.log = b.log.With("component", "bus.jetstream")

	var connOpts []nats.Option
	if cfg.URL == "" {
		if err := b.startEmbedded(ctx, cfg.Embedded); err != nil {
			b.endLife()
			return nil, err
		}
		connOpts = append(connOpts, nats.InProcessServer(b.srv))
	}

	var once sync.Once
	connOpts = append(connOpts,
		nats.Name(cfg.ConnectName),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DrainTimeout(30*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				b.log.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			b.log.Warn("nats async error", "subject", subject, "error", err)
		}),
		nats.ClosedHandler(func(*nats.Conn) { once.Do(func() { close(b.connClosed) }) }),
	)
	if deadline, ok := ctx.Deadline(); ok {
		connOpts = append(connOpts, nats.Timeout(time.Until(deadline)))
	}

	nc, err := nats.Connect(cfg.URL, connOpts...)
	if err != nil {
		b.endLife()
		b.stopEmbedded()
		return nil, fmt.Errorf("connect to nats: %w", err)
	}
	b.nc = nc
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending))
	if err != nil {
		b.endLife()
		nc.Close()
		b.stopEmbedded()
		return nil, fmt.Errorf("jetstream context: %w", err)
	}
	b.js = js
	if err := b.Ping(ctx); err != nil {
		_ = b.Close()
		return nil, err
	}
	return b, nil
}

// ClientURL is the URL other processes use to reach the same server: the
// embedded server's listen URL when EmbeddedConfig.Listen is set, the
// configured URL for an external server, and empty for an in-process-only
// embedded server.
func (b *Bus) ClientURL() string {
	if b.srv != nil {
		if b.srv.Addr() == nil {
			return ""
		}
		return b.srv.ClientURL()
	}
	return b.url
}

// Ping checks that the server answers JetStream API requests.
func (b *Bus) Ping(ctx context.Context) error {
	if b.closed.Load() {
		return bus.ErrClosed
	}
	if _, err := b.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("ping jetstream: %w", err)
	}
	return nil
}

// Close drains the connection (pending publishes and acks are flushed),
// then shuts the embedded server down and waits for it. Call it after every
// Receive has returned; a Receive still running stops pulling and returns
// bus.ErrClosed once its handlers return (their settles fail with
// bus.ErrClosed). Close is idempotent.
func (b *Bus) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		b.endLife()
		var errs []error
		if err := b.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, fmt.Errorf("drain nats connection: %w", err))
			b.nc.Close()
		}
		<-b.connClosed
		b.stopEmbedded()
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

// checkOpen returns bus.ErrClosed after Close.
func (b *Bus) checkOpen() error {
	if b.closed.Load() {
		return bus.ErrClosed
	}
	return nil
}

// closedOr maps errors caused by a closed connection to bus.ErrClosed.
func (b *Bus) closedOr(err error) error {
	if b.closed.Load() || errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConnectionClosed) {
		return fmt.Errorf("%w: %w", bus.ErrClosed, err)
	}
	return err
}

// startEmbedded starts the in-process server.
func (b *Bus) startEmbedded(ctx context.Context, cfg EmbeddedConfig) error {
	storeDir := cfg.StoreDir
	if storeDir == "" {
		dir, err := os.MkdirTemp("", "datapump-nats-*")
		if err != nil {
			return fmt.Errorf("embedded nats store dir: %w", err)
		}
		storeDir, b.tempDir = dir, dir
	}
	opts := &server.Options{
		ServerName: "datapump-embedded",
		JetStream:  true,
		StoreDir:   storeDir,
		SyncAlways: cfg.SyncAlways,
		DontListen: !cfg.Listen,
		Host:       cfg.Host,
		Port:       cfg.Port,
		NoSigs:     true,
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		b.removeTempDir()
		return fmt.Errorf("embedded nats server: %w", err)
	}
	srv.SetLoggerV2(serverLogger{log: b.log.With("component", "nats-server")}, false, false, false)
	srv.Start()
	b.srv = srv

	wait := 10 * time.Second
	if deadline, ok := ctx.Deadline(); ok {
		wait = time.Until(deadline)
	}
	if !srv.ReadyForConnections(wait) {
		b.stopEmbedded()
		return fmt.Errorf("embedded nats server not ready within %s", wait)
	}
	return nil
}

// stopEmbedded shuts the embedded server down, waits for it, and removes
// its temporary store.
func (b *Bus) stopEmbedded() {
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
	b.removeTempDir()
}

func (b *Bus) removeTempDir() {
	if b.tempDir == "" {
		return
	}
	if err := os.RemoveAll(b.tempDir); err != nil {
		b.log.Warn("remove embedded nats store", "dir", b.tempDir, "error", err)
	}
}

// serverLogger sends the embedded server's log lines to slog. Notices go to
// debug (the server is chatty at start), debug and trace are not enabled.
type serverLogger struct{ log *slog.Logger }

func (l serverLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l serverLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l serverLogger) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l serverLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l serverLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l serverLogger) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
