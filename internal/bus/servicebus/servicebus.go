package servicebus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"

	"github.com/datapump/datapump/internal/bus"
)

// closeTimeout bounds closing links and the connection in Close and at
// the end of Receive and DeadLetters.
const closeTimeout = 30 * time.Second

// Config configures Open. Exactly one way to authenticate is used: the
// connection string when it is set, otherwise Namespace with
// azidentity.DefaultAzureCredential (workload identity on AKS, a managed
// identity, environment variables or a developer's Azure CLI login).
type Config struct {
	// ConnectionString is a namespace connection string with a shared
	// access key or signature, for example
	// "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=…;SharedAccessKey=…".
	// The local emulator's string (with UseDevelopmentEmulator=true) is
	// accepted. It is a secret: it is never logged, and errors about it
	// never contain the key.
	ConnectionString string
	// Namespace is the fully qualified namespace
	// (ns.servicebus.windows.net), used when ConnectionString is empty.
	Namespace string
	// AdminEndpoint overrides where management requests (EnsureTopic,
	// EnsureSubscription, the subscription lookup of Receive, Ping) go,
	// as scheme://host[:port]. The SDK's management client always speaks
	// HTTPS to the namespace host; the emulator serves management on
	// plain HTTP port 5300, so for an emulator connection string the
	// default is http://<emulator host>:5300.
	AdminEndpoint string
	// Logger receives warnings about settlement, lock renewal and
	// receive errors. Nil discards them.
	Logger *slog.Logger
}

// Bus is a bus.Bus on Azure Service Bus.
type Bus struct {
	log    *slog.Logger
	client connector
	admin  administrator
	now    func() time.Time

	mu      sync.Mutex
	senders map[string]sender

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ bus.Bus = (*Bus)(nil)

// Open builds the clients for the namespace. It checks the configuration
// (a malformed connection string is refused with an error that does not
// contain its key) but does not contact the namespace: the SDK connects
// on first use. Call Ping to check that the namespace is reachable and
// the credentials are accepted.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var (
		client *azservicebus.Client
		adm    *admin.Client
	)
	switch {
	case cfg.ConnectionString != "":
		cs, err := parseConnectionString(cfg.ConnectionString)
		if err != nil {
			return nil, err
		}
		adminOpts, err := adminOptions(cfg.AdminEndpoint, cs.emulatorAdminEndpoint())
		if err != nil {
			return nil, err
		}
		client, err = azservicebus.NewClientFromConnectionString(cfg.ConnectionString, nil)
		if err != nil {
			return nil, cs.redact(fmt.Errorf("servicebus: connection string: %w", err))
		}
		adm, err = admin.NewClientFromConnectionString(cfg.ConnectionString, adminOpts)
		if err != nil {
			_ = client.Close(context.Background())
			return nil, cs.redact(fmt.Errorf("servicebus: connection string: %w", err))
		}
	case cfg.Namespace != "":
		ns, err := namespaceHost(cfg.Namespace)
		if err != nil {
			return nil, err
		}
		adminOpts, err := adminOptions(cfg.AdminEndpoint, "")
		if err != nil {
			return nil, err
		}
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("servicebus: azure credential for namespace %s: %w", ns, err)
		}
		client, err = azservicebus.NewClient(ns, cred, nil)
		if err != nil {
			return nil, fmt.Errorf("servicebus: client for namespace %s: %w", ns, err)
		}
		adm, err = admin.NewClient(ns, cred, adminOpts)
		if err != nil {
			_ = client.Close(context.Background())
			return nil, fmt.Errorf("servicebus: admin client for namespace %s: %w", ns, err)
		}
	default:
		return nil, errors.New("servicebus: set ConnectionString or Namespace")
	}
	return newBus(log, sdkClient{client}, adm), nil
}

// newBus wires a Bus to its clients; tests pass recording doubles.
func newBus(log *slog.Logger, client connector, adm administrator) *Bus {
	return &Bus{
		log:     log.With("component", "bus.servicebus"),
		client:  client,
		admin:   adm,
		now:     time.Now,
		senders: map[string]sender{},
	}
}

// namespaceHost accepts "ns.servicebus.windows.net" and also the
// sb:// or https:// URL of the namespace.
func namespaceHost(ns string) (string, error) {
	host := ns
	if strings.Contains(ns, "://") {
		u, err := url.Parse(ns)
		if err != nil {
			return "", fmt.Errorf("servicebus: Namespace %q is not a host name or URL", ns)
		}
		host = u.Host
	}
	host = strings.TrimSuffix(host, "/")
	if host == "" || strings.ContainsAny(host, "/ ;") {
		return "", fmt.Errorf("servicebus: Namespace %q is not a fully qualified host name (ns.servicebus.windows.net)", ns)
	}
	return host, nil
}

// Ping reads the namespace's properties through the management API, which
// checks the network path and that the credentials may manage entities
// (which EnsureTopic, EnsureSubscription and Receive need).
func (b *Bus) Ping(ctx context.Context) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if _, err := b.admin.GetNamespaceProperties(ctx, nil); err != nil {
		return fmt.Errorf("ping service bus: %w", b.closedOr(err))
	}
	return nil
}

// Close closes the senders and the connection. Call it after every
// Receive has returned. Close is idempotent.
func (b *Bus) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		var errs []error
		b.mu.Lock()
		for topic, s := range b.senders {
			if err := s.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("close sender for %s: %w", topic, err))
			}
		}
		b.senders = map[string]sender{}
		b.mu.Unlock()
		if err := b.client.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("close service bus client: %w", err))
		}
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

// closedOr maps errors caused by a closed bus or link to bus.ErrClosed.
func (b *Bus) closedOr(err error) error {
	if b.closed.Load() || hasCode(err, azservicebus.CodeClosed) {
		return fmt.Errorf("%w: %w", bus.ErrClosed, err)
	}
	return err
}

// hasCode reports whether err is an *azservicebus.Error with that code.
func hasCode(err error, code azservicebus.Code) bool {
	var sbErr *azservicebus.Error
	return errors.As(err, &sbErr) && sbErr.Code == code
}

// httpStatus returns the status code of a management API error, or 0.
func httpStatus(err error) int {
	var respErr *azcore.ResponseError
	if errors.As(err, &respErr) {
		return respErr.StatusCode
	}
	return 0
}

// sender returns the cached sender of a topic, creating it on first use.
func (b *Bus) sender(topic string) (sender, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if s, ok := b.senders[topic]; ok {
		return s, nil
	}
	s, err := b.client.NewSender(topic)
	if err != nil {
		return nil, fmt.Errorf("sender for %s: %w", topic, b.closedOr(err))
	}
	b.senders[topic] = s
	return s, nil
}
