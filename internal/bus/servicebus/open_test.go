package servicebus

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
)

const emulatorConnectionString = "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"

func TestOpenAcceptsEmulatorConnectionString(t *testing.T) {
	t.Parallel()
	b, err := Open(t.Context(), Config{ConnectionString: emulatorConnectionString})
	require.NoError(t, err)
	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "Close is idempotent")

	cs, err := parseConnectionString(emulatorConnectionString)
	require.NoError(t, err)
	require.True(t, cs.emulator)
	require.Equal(t, "http://localhost:5300", cs.emulatorAdminEndpoint(), "the emulator's management port")

	real, err := parseConnectionString("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc=")
	require.NoError(t, err)
	require.Empty(t, real.emulatorAdminEndpoint())
	_, err = parseConnectionString("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1&skn=k")
	require.NoError(t, err, "a shared access signature instead of a key")
}

func TestOpenRefusesMalformedConnectionStringWithoutTheKey(t *testing.T) {
	t.Parallel()
	const secret = "c2VjcmV0LWtleS12YWx1ZQ=="
	for name, cs := range map[string]string{
		"no endpoint":          "SharedAccessKeyName=root;SharedAccessKey=" + secret,
		"endpoint not sb://":   "Endpoint=https://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=" + secret,
		"no key name":          "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=" + secret,
		"no key":               "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root",
		"part without =":       "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;" + secret,
		"key run into a part":  "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root SharedAccessKey " + secret,
		"bad emulator flag":    "Endpoint=sb://localhost;SharedAccessKeyName=root;SharedAccessKey=" + secret + ";UseDevelopmentEmulator=" + secret,
		"emulator flag is key": "Endpoint=sb://localhost;SharedAccessKeyName=root;SharedAccessKey=" + secret + ";UseDevelopmentEmulator=yes please",
		"garbage":              secret,
		"endpoint unparsable":  "Endpoint=sb://%zz;SharedAccessKeyName=root;SharedAccessKey=" + secret,
	} {
		var logs bytes.Buffer
		_, err := Open(t.Context(), Config{
			ConnectionString: cs,
			Logger:           slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
		require.Error(t, err, name)
		require.Contains(t, err.Error(), "connection string", name)
		require.NotContains(t, err.Error(), secret, name)
		require.NotContains(t, logs.String(), secret, name)
		for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
			require.NotContains(t, e.Error(), secret, name)
		}
	}
}

func TestRedactScrubsSecretsFromSDKErrors(t *testing.T) {
	t.Parallel()
	cs := connectionString{secrets: []string{"k3y", "s1g"}}
	err := cs.redact(errors.New("parse SharedAccessKey=k3y and sig=s1g"))
	require.Equal(t, "parse SharedAccessKey=<redacted> and sig=<redacted>", err.Error())
}

func TestOpenWithNamespace(t *testing.T) {
	t.Parallel()
	for _, ns := range []string{"ns.servicebus.windows.net", "sb://ns.servicebus.windows.net/", "https://ns.servicebus.windows.net"} {
		host, err := namespaceHost(ns)
		require.NoError(t, err, ns)
		require.Equal(t, "ns.servicebus.windows.net", host)
	}
	for _, bad := range []string{"ns.servicebus.windows.net/path", "sb://", "a b"} {
		_, err := namespaceHost(bad)
		require.ErrorContains(t, err, "Namespace", bad)
	}
	_, err := Open(t.Context(), Config{})
	require.ErrorContains(t, err, "ConnectionString or Namespace")
	_, err = Open(t.Context(), Config{ConnectionString: emulatorConnectionString, AdminEndpoint: "ftp://x"})
	require.ErrorContains(t, err, "AdminEndpoint")
}

func TestAdminEndpointRoutesManagementRequests(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.WriteHeader(http.StatusNotFound) // no such topic
	}))
	t.Cleanup(srv.Close)

	b, err := Open(t.Context(), Config{ConnectionString: emulatorConnectionString, AdminEndpoint: srv.URL})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	got, err := b.admin.GetTopic(t.Context(), "payments", nil)
	require.NoError(t, err)
	require.Nil(t, got)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []string{"GET /payments"}, paths, "the management request went to AdminEndpoint")
}

func TestPingUsesManagementAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	require.NoError(t, h.b.Ping(t.Context()))
	h.admin.pingErr = statusError(http.StatusUnauthorized)
	require.ErrorContains(t, h.b.Ping(t.Context()), "ping service bus")
	require.Equal(t, 2, h.log.count("get namespace"))
}

func TestClosedBus(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	_, err := h.b.Publish(t.Context(), "payments", bus.Message{ID: "before"})
	require.NoError(t, err)
	require.NoError(t, h.b.Close())
	require.NoError(t, h.b.Close())
	require.Equal(t, 1, h.log.count("close sender payments"))
	require.Equal(t, 1, h.log.count("close client"))

	ctx := t.Context()
	_, err = h.b.Publish(ctx, "payments", bus.Message{ID: "late"})
	require.ErrorIs(t, err, bus.ErrClosed)
	_, err = h.b.EnsureTopic(ctx, bus.TopicSpec{Name: "payments"})
	require.ErrorIs(t, err, bus.ErrClosed)
	_, err = h.b.EnsureSubscription(ctx, bus.SubscriptionSpec{Topic: "payments", Name: "s"})
	require.ErrorIs(t, err, bus.ErrClosed)
	require.ErrorIs(t, h.b.Receive(ctx, "payments", "s", bus.ReceiveOptions{}, func(context.Context, *bus.Delivery) {}), bus.ErrClosed)
	_, err = h.b.DeadLetters(ctx, "payments", "s", 1)
	require.ErrorIs(t, err, bus.ErrClosed)
	require.ErrorIs(t, h.b.Ping(ctx), bus.ErrClosed)
}
