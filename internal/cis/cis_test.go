package cis_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis"
	"github.com/datapump/datapump/internal/cis/mockcis"
)

// logBuffer collects JSON log lines from concurrent writers.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the log records whose msg is msg.
func (b *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		var rec map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &rec))
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// newClient returns a client with fast backoff and a captured debug log;
// adjust may change the config first.
func newClient(t *testing.T, adjust func(*cis.Config)) (*cis.Client, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg := cis.Config{
		BackoffInitial: time.Millisecond,
		BackoffMax:     5 * time.Millisecond,
		Getenv:         func(string) string { return "" },
		Logger:         slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	c, err := cis.New(cfg)
	require.NoError(t, err)
	return c, logs
}

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func request(baseURL, key string) cis.Request {
	return cis.Request{
		BillerID:       "b1",
		Endpoint:       catalog.CISEndpoint{BaseURL: baseURL, Auth: catalog.AuthNone},
		Path:           "/payments",
		IdempotencyKey: key,
		Body:           []byte(`{"billerId":"b1","amountCents":100}`),
	}
}

func startMock(t *testing.T, f mockcis.Faults) (*mockcis.Server, *httptest.Server) {
	t.Helper()
	m := mockcis.New(mockcis.Options{Faults: f})
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	return m, srv
}

// statusServer answers every request with status (and header, if any) and
// counts the requests.
func statusServer(t *testing.T, status int, header map[string]string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"error":"answer"}`)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func asError(t *testing.T, err error) *cis.Error {
	t.Helper()
	var e *cis.Error
	require.ErrorAs(t, err, &e)
	return e
}

func TestSendDeliversWithHeaders(t *testing.T) {
	t.Parallel()
	m, mock := startMock(t, mockcis.Faults{})
	var got http.Header
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = r.Header.Clone()
		mu.Unlock()
		m.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	_ = mock

	c, _ := newClient(t, nil)
	req := request(srv.URL+"/api/v1", "shard1:payment:42")
	req.Header = http.Header{
		"Traceparent":     {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		"Idempotency-Key": {"forged"},
	}
	res, err := c.Send(t.Context(), req)
	require.NoError(t, err)
	require.Equal(t, cis.Result{StatusCode: 200, Attempts: 1}, res)

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, "application/json", got.Get("Content-Type"))
	require.Equal(t, "shard1:payment:42", got.Get("Idempotency-Key"), "extra headers cannot override the key")
	require.Equal(t, "b1", got.Get("X-Biller-Id"))
	require.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", got.Get("Traceparent"))
	recs := m.Requests()
	require.Len(t, recs, 1)
	require.Equal(t, "/api/v1/payments", recs[0].Path)
	require.Equal(t, "shard1:payment:42", recs[0].IdempotencyKey)
	require.JSONEq(t, `{"billerId":"b1","amountCents":100}`, string(recs[0].Body))
}

// TestEndpointChangeTakesEffect: the client keeps the URL it built per base
// URL and path, so a biller whose endpoint changes in the catalog is sent
// to the new one at once, and the old one stays right for other billers.
func TestEndpointChangeTakesEffect(t *testing.T) {
	t.Parallel()
	m1, srv1 := startMock(t, mockcis.Faults{})
	m2, srv2 := startMock(t, mockcis.Faults{})
	c, _ := newClient(t, nil)
	for i, base := range []string{srv1.URL, srv1.URL + "/v2", srv2.URL, srv1.URL} {
		_, err := c.Send(t.Context(), request(base, fmt.Sprintf("shard1:payment:%d", i)))
		require.NoError(t, err)
	}
	var paths1 []string
	for _, r := range m1.Requests() {
		paths1 = append(paths1, r.IdempotencyKey+" "+r.Path)
	}
	require.Equal(t, []string{"shard1:payment:0 /payments", "shard1:payment:1 /v2/payments", "shard1:payment:3 /payments"}, paths1)
	recs2 := m2.Requests()
	require.Len(t, recs2, 1)
	require.Equal(t, "shard1:payment:2", recs2[0].IdempotencyKey)
}

func TestAPIKeySentInDefaultHeader(t *testing.T) {
	t.Parallel()
	m, srv := startMock(t, mockcis.Faults{RequireAPIKey: "k-123"})
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Getenv = env(map[string]string{"ACME_KEY": "k-123"}) })
	req := request(srv.URL, "k1")
	req.Endpoint.Auth, req.Endpoint.APIKeyEnv = catalog.AuthAPIKey, "ACME_KEY"
	res, err := c.Send(t.Context(), req)
	require.NoError(t, err)
	require.Equal(t, 200, res.StatusCode)
	require.Equal(t, 1, m.Stats().Accepted)
}

func TestAPIKeySentInConfiguredHeader(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Ocp-Apim-Subscription-Key") + "|" + r.Header.Get("X-Api-Key"))
	}))
	t.Cleanup(srv.Close)
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Getenv = env(map[string]string{"ACME_KEY": "k-123"}) })
	req := request(srv.URL, "k1")
	req.Endpoint.Auth, req.Endpoint.APIKeyEnv, req.Endpoint.APIKeyHeader = catalog.AuthAPIKey, "ACME_KEY", "Ocp-Apim-Subscription-Key"
	_, err := c.Send(t.Context(), req)
	require.NoError(t, err)
	require.Equal(t, "k-123|", got.Load())
}

func TestMissingSecretIsPermanentAndNamesTheVariable(t *testing.T) {
	t.Parallel()
	srv, n := statusServer(t, 200, nil)
	c, _ := newClient(t, nil)
	for name, ep := range map[string]catalog.CISEndpoint{
		"api key": {BaseURL: srv.URL, Auth: catalog.AuthAPIKey, APIKeyEnv: "ACME_CIS_KEY"},
		"oauth2":  {BaseURL: srv.URL, Auth: catalog.AuthOAuth2, TokenURL: srv.URL + "/token", ClientID: "c", ClientSecretEnv: "ACME_CIS_KEY"},
	} {
		req := request(srv.URL, "k1")
		req.Endpoint = ep
		res, err := c.Send(t.Context(), req)
		require.ErrorIs(t, err, cis.ErrMissingSecret, name)
		require.True(t, cis.IsPermanent(err), name)
		require.Contains(t, err.Error(), "ACME_CIS_KEY", name)
		require.Zero(t, res.Attempts, name)
	}
	require.Zero(t, n.Load())
}

func TestSecretNeverInErrorsOrLogs(t *testing.T) {
	t.Parallel()
	const secret = "sup3r-s3cret-value"
	// A CIS that echoes the request's headers back in its error body.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusServiceUnavailable
		if r.Header.Get("X-Fail") == "permanent" {
			status = http.StatusUnprocessableEntity
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(r.Header)
	}))
	t.Cleanup(srv.Close)
	c, logs := newClient(t, func(cfg *cis.Config) { cfg.Getenv = env(map[string]string{"KEY": secret}) })
	for _, fail := range []string{"permanent", "transient"} {
		req := request(srv.URL, "k1")
		req.Endpoint.Auth, req.Endpoint.APIKeyEnv = catalog.AuthAPIKey, "KEY"
		req.Header = http.Header{"X-Fail": {fail}}
		_, err := c.Send(t.Context(), req)
		require.Error(t, err)
		require.Equal(t, fail == "permanent", cis.IsPermanent(err))
		e := asError(t, err)
		require.Contains(t, e.Body, "[REDACTED]", "the echo is kept, without the secret")
		require.NotContains(t, err.Error(), secret)
		require.NotContains(t, e.Body, secret)
	}
	require.NotEmpty(t, logs.lines(t, "cis attempt failed, retrying"))
	require.NotContains(t, logs.String(), secret)
}

func TestRetryThenSuccess(t *testing.T) {
	t.Parallel()
	m, srv := startMock(t, mockcis.Faults{FailFirst: map[string]int{"k1": 2}})
	c, logs := newClient(t, nil) // default: 2 retries
	res, err := c.Send(t.Context(), request(srv.URL, "k1"))
	require.NoError(t, err)
	require.Equal(t, cis.Result{StatusCode: 200, Attempts: 3}, res)
	require.Equal(t, mockcis.Stats{Requests: 3, Accepted: 1, Failed: 2, UniqueAccepted: 1}, m.Stats())
	retries := logs.lines(t, "cis attempt failed, retrying")
	require.Len(t, retries, 2)
	require.Equal(t, "b1", retries[0]["biller"])
	require.Equal(t, "k1", retries[0]["item"])
}

// TestAttemptsAreNumberedAndAMockCountsTheResend: every request of one
// Send carries its attempt number, so when the first attempt was accepted
// but its answer came too late, the CIS sees the second as a resend of the
// same Idempotency-Key, not a second delivery.
func TestAttemptsAreNumberedAndAMockCountsTheResend(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		attempts []string
	)
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		attempts = append(attempts, r.Header.Get(cis.AttemptHeader))
		first := len(attempts) == 1
		mu.Unlock()
		if first {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(flaky.Close)
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.DefaultTimeout = 200 * time.Millisecond })
	res, err := c.Send(context.Background(), request(flaky.URL, "k0"))
	require.NoError(t, err)
	require.Equal(t, 2, res.Attempts)
	require.Equal(t, []string{"1", "2"}, attempts, "a 503, then the accepted attempt")

	m, srv := startMock(t, mockcis.Faults{RateTimeout: 1, TimeoutDelay: time.Minute})
	_, err = c.Send(context.Background(), request(srv.URL, "k1"))
	require.Error(t, err, "every attempt outran the timeout")
	st := m.Stats()
	require.Equal(t, cis.DefaultRetries, st.Duplicates, "each resend was accepted again")
	require.Equal(t, cis.DefaultRetries, st.Resends, "and the mock knows they were resends")
}

func TestRetriesExhaustedIsTransient(t *testing.T) {
	t.Parallel()
	m, srv := startMock(t, mockcis.Faults{FailFirst: map[string]int{"k1": 100}})
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Retries = 3 })
	res, err := c.Send(t.Context(), request(srv.URL, "k1"))
	require.Error(t, err)
	require.False(t, cis.IsPermanent(err))
	e := asError(t, err)
	require.Equal(t, 503, e.StatusCode)
	require.Contains(t, e.Body, "injected")
	require.Equal(t, cis.Result{StatusCode: 503, Attempts: 4}, res)
	require.Equal(t, 4, m.Stats().Requests)
}

func TestNegativeRetriesMeansOneAttempt(t *testing.T) {
	t.Parallel()
	srv, n := statusServer(t, 503, nil)
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Retries = -1 })
	res, err := c.Send(t.Context(), request(srv.URL, "k1"))
	require.Error(t, err)
	require.Equal(t, 1, res.Attempts)
	require.EqualValues(t, 1, n.Load())
}

func TestStatusClassification(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status    int
		permanent bool
	}{
		{400, true}, {401, true}, {403, true}, {404, true}, {409, true}, {422, true}, {301, true},
		{408, false}, {425, false}, {429, false}, {500, false}, {502, false}, {503, false}, {504, false},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			t.Parallel()
			srv, n := statusServer(t, tc.status, map[string]string{"Location": "http://elsewhere.example/"})
			c, _ := newClient(t, nil)
			res, err := c.Send(t.Context(), request(srv.URL, "k1"))
			require.Error(t, err)
			require.Equal(t, tc.permanent, cis.IsPermanent(err))
			require.Equal(t, tc.status, asError(t, err).StatusCode)
			want := 3
			if tc.permanent {
				want = 1
			}
			require.Equal(t, cis.Result{StatusCode: tc.status, Attempts: want}, res)
			require.EqualValues(t, want, n.Load())
		})
	}
}

func TestPermanent422NotRetried(t *testing.T) {
	t.Parallel()
	m, srv := startMock(t, mockcis.Faults{RateReject: 1})
	c, _ := newClient(t, nil)
	res, err := c.Send(t.Context(), request(srv.URL, "k1"))
	require.True(t, cis.IsPermanent(err))
	require.Equal(t, 422, asError(t, err).StatusCode)
	require.Equal(t, 1, res.Attempts)
	require.Equal(t, mockcis.Stats{Requests: 1, Rejected: 1}, m.Stats())
}

func TestBadPayloadAnswerStillDelivers(t *testing.T) {
	t.Parallel()
	m, srv := startMock(t, mockcis.Faults{RateBadPayload: 1})
	c, _ := newClient(t, nil)
	res, err := c.Send(t.Context(), request(srv.URL, "k1"))
	require.NoError(t, err)
	require.Equal(t, 200, res.StatusCode)
	require.Equal(t, 1, m.Stats().UniqueAccepted)
}

func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	t.Cleanup(srv.Close)
	c, logs := newClient(t, nil)
	res, err := c.Send(t.Context(), request(srv.URL, "k1"))
	require.NoError(t, err)
	require.Equal(t, cis.Result{StatusCode: 200, Attempts: 2}, res)
	retries := logs.lines(t, "cis attempt failed, retrying")
	require.Len(t, retries, 1)
	require.EqualValues(t, time.Second, retries[0]["wait"], "the wait is Retry-After, not the 1ms backoff")
}

func TestRetryAfterCapped(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	t.Cleanup(srv.Close)
	c, logs := newClient(t, func(cfg *cis.Config) { cfg.RetryAfterMax = 10 * time.Millisecond })
	res, err := c.Send(t.Context(), request(srv.URL, "k1"))
	require.NoError(t, err)
	require.Equal(t, 2, res.Attempts)
	require.EqualValues(t, 10*time.Millisecond, logs.lines(t, "cis attempt failed, retrying")[0]["wait"])
}

func TestRetryAfterReportedWhenNotWaited(t *testing.T) {
	t.Parallel()
	_, srv := startMock(t, mockcis.Faults{Rate429: 1})
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Retries = -1 })
	_, err := c.Send(t.Context(), request(srv.URL, "k1"))
	e := asError(t, err)
	require.False(t, e.Permanent)
	require.Equal(t, 429, e.StatusCode)
	require.Equal(t, time.Second, e.RetryAfter)
}

func TestRetryAfterBeyondDeadlineReturnsAtOnce(t *testing.T) {
	t.Parallel()
	srv, n := statusServer(t, 429, map[string]string{"Retry-After": "600"})
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.RetryAfterMax = time.Hour })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	res, err := c.Send(ctx, request(srv.URL, "k1"))
	e := asError(t, err)
	require.False(t, e.Permanent)
	require.Equal(t, 10*time.Minute, e.RetryAfter)
	require.Equal(t, 1, res.Attempts)
	require.EqualValues(t, 1, n.Load())
	require.NoError(t, ctx.Err(), "Send did not wait for the deadline")
}

func TestTimeoutIsTransient(t *testing.T) {
	t.Parallel()
	m, srv := startMock(t, mockcis.Faults{RateTimeout: 1, TimeoutDelay: time.Minute})
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Retries = 1 })
	req := request(srv.URL, "k1")
	req.Endpoint.Timeout = 50 * time.Millisecond
	res, err := c.Send(t.Context(), req)
	require.Error(t, err)
	require.False(t, cis.IsPermanent(err))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), "no answer within 50ms")
	require.Equal(t, cis.Result{StatusCode: 0, Attempts: 2}, res)
	// Both hung requests were accepted: this is how duplicates happen.
	require.Equal(t, 1, m.Stats().Duplicates)
}

func TestDefaultTimeoutApplies(t *testing.T) {
	t.Parallel()
	_, srv := startMock(t, mockcis.Faults{Latency: time.Minute})
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.DefaultTimeout = 30 * time.Millisecond; cfg.Retries = -1 })
	_, err := c.Send(t.Context(), request(srv.URL, "k1"))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), "no answer within 30ms")
}

func TestCallerContextBoundsTheCall(t *testing.T) {
	t.Parallel()
	srv, n := statusServer(t, 503, nil)
	c, _ := newClient(t, func(cfg *cis.Config) {
		cfg.BackoffInitial, cfg.BackoffMax = time.Hour, time.Hour
		cfg.Retries = 5
	})

	// The next backoff would outlast the deadline: the last answer comes back now.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	res, err := c.Send(ctx, request(srv.URL, "k1"))
	require.False(t, cis.IsPermanent(err))
	require.Equal(t, 503, asError(t, err).StatusCode)
	require.Equal(t, 1, res.Attempts)
	require.NoError(t, ctx.Err())

	// A cancelled caller: no request, a transient error wrapping the cause.
	done, cancelDone := context.WithCancel(t.Context())
	cancelDone()
	res, err = c.Send(done, request(srv.URL, "k2"))
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, cis.IsPermanent(err))
	require.Zero(t, res.Attempts)
	require.EqualValues(t, 1, n.Load())
}

func TestCallerCancelDuringBackoff(t *testing.T) {
	t.Parallel()
	srv, n := statusServer(t, 503, nil)
	c, logs := newClient(t, func(cfg *cis.Config) { cfg.BackoffInitial, cfg.BackoffMax = time.Hour, time.Hour })
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		// Cancel once the client is waiting before its second attempt.
		for !strings.Contains(logs.String(), "cis attempt failed, retrying") {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	res, err := c.Send(ctx, request(srv.URL, "k1"))
	require.ErrorIs(t, err, context.Canceled)
	e := asError(t, err)
	require.False(t, e.Permanent)
	require.Equal(t, 503, e.StatusCode, "the last answer is kept")
	require.Equal(t, 1, res.Attempts)
	require.EqualValues(t, 1, n.Load())
}

func TestInvalidRequestsArePermanent(t *testing.T) {
	t.Parallel()
	c, _ := newClient(t, nil)
	for name, req := range map[string]cis.Request{
		"relative url":   request("cis.example.com", "k1"),
		"ftp url":        request("ftp://cis.example.com", "k1"),
		"empty url":      request("", "k1"),
		"unparsable url": request("http://user:pw@[::1", "k1"),
		"no biller":      {Endpoint: catalog.CISEndpoint{BaseURL: "http://x.example"}, IdempotencyKey: "k1"},
		"no key":         request("http://x.example", ""),
		"unknown auth":   {BillerID: "b1", Endpoint: catalog.CISEndpoint{BaseURL: "http://x.example", Auth: "basic"}, IdempotencyKey: "k1"},
		"bad token url":  {BillerID: "b1", Endpoint: catalog.CISEndpoint{BaseURL: "http://x.example", Auth: catalog.AuthOAuth2, TokenURL: "/token", ClientSecretEnv: "S"}, IdempotencyKey: "k1"},
		"no api key env": {BillerID: "b1", Endpoint: catalog.CISEndpoint{BaseURL: "http://x.example", Auth: catalog.AuthAPIKey}, IdempotencyKey: "k1"},
	} {
		res, err := c.Send(t.Context(), req)
		require.Error(t, err, name)
		require.True(t, cis.IsPermanent(err), name)
		require.True(t, errors.Is(err, cis.ErrInvalidRequest) || errors.Is(err, cis.ErrMissingSecret), name)
		require.NotContains(t, err.Error(), "pw", name)
		require.Zero(t, res.Attempts, name)
	}
}

func TestNetworkErrorIsTransient(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	c, _ := newClient(t, nil)
	res, err := c.Send(t.Context(), request("http://"+addr, "k1"))
	require.Error(t, err)
	require.False(t, cis.IsPermanent(err))
	require.Zero(t, asError(t, err).StatusCode)
	require.Contains(t, err.Error(), "post http://"+addr+"/payments")
	require.Equal(t, 3, res.Attempts)
}

func TestBreakerOpensAndHalfOpens(t *testing.T) {
	t.Parallel()
	var status atomic.Int64
	status.Store(503)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(srv.Close)
	c, logs := newClient(t, func(cfg *cis.Config) {
		cfg.Retries = -1
		cfg.BreakerFailures = 3
		cfg.BreakerOpenFor = 100 * time.Millisecond
	})
	send := func(key string) error {
		_, err := c.Send(t.Context(), request(srv.URL, key))
		return err
	}

	require.Equal(t, "closed", c.BreakerState("b1"))
	for i := range 3 {
		require.Error(t, send(fmt.Sprint("k", i)))
	}
	require.Equal(t, "open", c.BreakerState("b1"))

	res, err := c.Send(t.Context(), request(srv.URL, "k9"))
	require.ErrorIs(t, err, cis.ErrCircuitOpen)
	require.False(t, cis.IsPermanent(err))
	require.Zero(t, res.Attempts)
	require.EqualValues(t, 3, n.Load(), "an open breaker does not call the server")

	// After BreakerOpenFor one probe goes through; a failed probe reopens.
	require.Eventually(t, func() bool { return c.BreakerState("b1") == "half-open" }, 5*time.Second, 5*time.Millisecond)
	require.Error(t, send("probe1"))
	require.Equal(t, "open", c.BreakerState("b1"))
	require.EqualValues(t, 4, n.Load())

	// A successful probe closes it.
	status.Store(200)
	require.Eventually(t, func() bool { return c.BreakerState("b1") == "half-open" }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, send("probe2"))
	require.Equal(t, "closed", c.BreakerState("b1"))
	require.NoError(t, send("after"))

	var tos []any
	for _, l := range logs.lines(t, "cis circuit breaker state changed") {
		require.Equal(t, "b1", l["biller"])
		tos = append(tos, l["to"])
	}
	require.Equal(t, []any{"open", "half-open", "open", "half-open", "closed"}, tos)
}

func TestBreakerIgnores4xx(t *testing.T) {
	t.Parallel()
	srv, n := statusServer(t, 422, nil)
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.BreakerFailures = 2 })
	for i := range 10 {
		_, err := c.Send(t.Context(), request(srv.URL, fmt.Sprint("k", i)))
		require.True(t, cis.IsPermanent(err))
	}
	require.Equal(t, "closed", c.BreakerState("b1"))
	require.EqualValues(t, 10, n.Load())
}

func TestBreakerIsPerBiller(t *testing.T) {
	t.Parallel()
	bad, _ := statusServer(t, 500, nil)
	good, _ := statusServer(t, 200, nil)
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.BreakerFailures = 2; cfg.BreakerOpenFor = time.Hour })
	_, err := c.Send(t.Context(), request(bad.URL, "k1")) // 3 attempts: trips at 2
	require.Error(t, err)
	require.Equal(t, "open", c.BreakerState("b1"))
	_, err = c.Send(t.Context(), request(bad.URL, "k2"))
	require.ErrorIs(t, err, cis.ErrCircuitOpen)

	other := request(good.URL, "k3")
	other.BillerID = "b2"
	_, err = c.Send(t.Context(), other)
	require.NoError(t, err)
	require.Equal(t, "closed", c.BreakerState("b2"))
	require.Equal(t, "closed", c.BreakerState("never-called"))
}

func TestConcurrencyCapPerBiller(t *testing.T) {
	t.Parallel()
	const limit, senders = 3, 40
	var mu sync.Mutex
	inflight, peak := map[string]int{}, map[string]int{}
	gate := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		biller := r.Header.Get("X-Biller-Id")
		mu.Lock()
		inflight[biller]++
		peak[biller] = max(peak[biller], inflight[biller])
		mu.Unlock()
		if biller == "busy" {
			<-gate
		}
		mu.Lock()
		inflight[biller]--
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.DefaultMaxConcurrent = 100 })

	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := range senders {
		wg.Go(func() {
			req := request(srv.URL, fmt.Sprint("k", i))
			req.BillerID = "busy"
			req.Endpoint.MaxConcurrent = limit
			_, err := c.Send(t.Context(), req)
			errs <- err
		})
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return inflight["busy"] == limit
	}, 5*time.Second, time.Millisecond)

	// Another biller is not held up by the busy one's cap.
	other := request(srv.URL, "other")
	other.BillerID = "quiet"
	res, err := c.Send(t.Context(), other)
	require.NoError(t, err)
	require.Equal(t, 1, res.Attempts)

	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, limit, peak["busy"])
}

func TestRateLimitPerBiller(t *testing.T) {
	t.Parallel()
	srv, n := statusServer(t, 200, nil)
	c, _ := newClient(t, nil)
	req := request(srv.URL, "k1")
	req.Endpoint.RatePerSecond = 0.01 // one token, then one per 100s
	_, err := c.Send(t.Context(), req)
	require.NoError(t, err)

	// The next token is far beyond the caller's deadline: refused at once.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req.IdempotencyKey = "k2"
	res, err := c.Send(ctx, req)
	require.Error(t, err)
	require.False(t, cis.IsPermanent(err))
	require.ErrorContains(t, err, "rate limit")
	require.Zero(t, res.Attempts)
	require.EqualValues(t, 1, n.Load())

	other := request(srv.URL, "k3")
	other.BillerID = "b2"
	_, err = c.Send(ctx, other)
	require.NoError(t, err, "another biller has its own limiter")
}

func TestOAuth2TokenFetchedOnceAndSentAsBearer(t *testing.T) {
	t.Parallel()
	m := mockcis.New(mockcis.Options{Faults: mockcis.Faults{RequireBearer: true}})
	var authz sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/oauth/token" {
			authz.Store(r.Header.Get("Authorization"), true)
		}
		m.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Getenv = env(map[string]string{"BRAVO_SECRET": "cs-1"}) })

	const senders = 20
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := range senders {
		wg.Go(func() {
			req := request(srv.URL, fmt.Sprint("k", i))
			req.Endpoint = catalog.CISEndpoint{
				BaseURL: srv.URL, Auth: catalog.AuthOAuth2, TokenURL: srv.URL + "/oauth/token",
				ClientID: "bravo", ClientSecretEnv: "BRAVO_SECRET", Scopes: []string{"payments.write"},
			}
			_, err := c.Send(t.Context(), req)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, 1, m.Stats().TokensIssued)
	require.Equal(t, senders, m.Stats().UniqueAccepted)
	var headers []string
	authz.Range(func(k, _ any) bool { headers = append(headers, k.(string)); return true })
	require.Len(t, headers, 1)
	require.True(t, strings.HasPrefix(headers[0], "Bearer mock-token-"), headers[0])
}

func TestOAuth2RevokedTokenRefreshedOnce(t *testing.T) {
	t.Parallel()
	var issued atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			id, secret, _ := r.BasicAuth()
			if id != "bravo" || secret != "cs-1" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = fmt.Fprintf(w, `{"access_token":"tok-%d","token_type":"Bearer","expires_in":3600}`, issued.Add(1))
			return
		}
		if r.Header.Get("Authorization") != "Bearer tok-2" || strings.HasPrefix(r.URL.Path, "/strict") { // tok-1 was revoked
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(srv.Close)
	c, _ := newClient(t, func(cfg *cis.Config) {
		cfg.Getenv = env(map[string]string{"S": "cs-1"})
		cfg.BreakerFailures = 1
	})
	req := request(srv.URL, "k1")
	req.Endpoint = catalog.CISEndpoint{BaseURL: srv.URL, Auth: catalog.AuthOAuth2, TokenURL: srv.URL + "/token", ClientID: "bravo", ClientSecretEnv: "S"}
	res, err := c.Send(t.Context(), req)
	require.NoError(t, err)
	require.Equal(t, cis.Result{StatusCode: 200, Attempts: 2}, res)
	require.EqualValues(t, 2, issued.Load())
	require.Equal(t, "closed", c.BreakerState("b1"), "a stale token says nothing about the CIS's health")

	// A CIS that refuses every token: one refresh, then a permanent 401.
	req.Endpoint.BaseURL = srv.URL + "/strict"
	issued.Store(10)
	res, err = c.Send(t.Context(), req)
	require.True(t, cis.IsPermanent(err))
	require.Equal(t, 401, asError(t, err).StatusCode)
	require.Equal(t, 2, res.Attempts)
}

func TestOAuth2BadCredentialsArePermanent(t *testing.T) {
	t.Parallel()
	_, srv := startMock(t, mockcis.Faults{})
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Getenv = env(map[string]string{"S": "cs-1"}) })
	req := request(srv.URL, "k1")
	// The mock refuses an empty client id.
	req.Endpoint = catalog.CISEndpoint{BaseURL: srv.URL, Auth: catalog.AuthOAuth2, TokenURL: srv.URL + "/oauth/token", ClientSecretEnv: "S"}
	_, err := c.Send(t.Context(), req)
	require.True(t, cis.IsPermanent(err))
	require.Contains(t, err.Error(), "oauth2 token: status 401")
	require.Contains(t, err.Error(), "invalid_client")
	require.NotContains(t, err.Error(), "cs-1")
}

func TestOAuth2TokenEndpointDownIsTransient(t *testing.T) {
	t.Parallel()
	srv, n := statusServer(t, 503, nil)
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Getenv = env(map[string]string{"S": "cs-1"}) })
	req := request(srv.URL, "k1")
	req.Endpoint = catalog.CISEndpoint{BaseURL: srv.URL, Auth: catalog.AuthOAuth2, TokenURL: srv.URL + "/token", ClientID: "c", ClientSecretEnv: "S"}
	res, err := c.Send(t.Context(), req)
	require.Error(t, err)
	require.False(t, cis.IsPermanent(err))
	require.Contains(t, err.Error(), "oauth2 token: status 503")
	require.Equal(t, 3, res.Attempts)
	// At least one token request per attempt (auth style auto-detection may
	// try the second style too).
	require.GreaterOrEqual(t, n.Load(), int64(3))
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	var leaked atomic.Bool
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Store(r.Header.Get("X-Api-Key") != "")
	}))
	t.Cleanup(elsewhere.Close)
	srv, _ := statusServer(t, http.StatusTemporaryRedirect, map[string]string{"Location": elsewhere.URL})
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Getenv = env(map[string]string{"K": "key"}) })
	req := request(srv.URL, "k1")
	req.Endpoint.Auth, req.Endpoint.APIKeyEnv = catalog.AuthAPIKey, "K"
	_, err := c.Send(t.Context(), req)
	require.True(t, cis.IsPermanent(err))
	require.Equal(t, http.StatusTemporaryRedirect, asError(t, err).StatusCode)
	require.False(t, leaked.Load())
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for field, cfg := range map[string]cis.Config{
		"default_timeout":         {DefaultTimeout: -time.Second},
		"backoff_max":             {BackoffMax: -1},
		"retry_after_max":         {RetryAfterMax: -1},
		"breaker_open_for":        {BreakerOpenFor: -1},
		"default_rate_per_second": {DefaultRatePerSecond: -1},
		"default_max_concurrent":  {DefaultMaxConcurrent: -1},
		"max_idle_conns_per_host": {MaxIdleConnsPerHost: -1},
		"breaker_failures":        {BreakerFailures: -1},
		"backoff_initial":         {BackoffInitial: time.Second, BackoffMax: time.Millisecond},
	} {
		_, err := cis.New(cfg)
		require.ErrorContains(t, err, field)
	}
	c, err := cis.New(cis.Config{})
	require.NoError(t, err)
	require.Equal(t, "closed", c.BreakerState("b1"))
}

// TestIdleConnectionsCoverTheRequestsInFlight: with MaxIdleConnsPerHost
// at the most requests in flight, a second wave of as many concurrent
// requests to one host reuses the first wave's connections and opens none
// (the transport's own defaults keep 2 per host and 100 in all, and the
// rest would be dialled and closed again on every wave).
func TestIdleConnectionsCoverTheRequestsInFlight(t *testing.T) {
	t.Parallel()
	const inFlight = 120 // above the old 64 per host and the transport's 100 in all
	var opened atomic.Int64
	var arrived sync.WaitGroup
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		<-release
		w.WriteHeader(http.StatusOK)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, _ := newClient(t, func(cfg *cis.Config) {
		cfg.DefaultMaxConcurrent = inFlight
		cfg.MaxIdleConnsPerHost = inFlight
	})
	wave := func(n int) {
		arrived.Add(inFlight)
		release = make(chan struct{})
		var sent sync.WaitGroup
		for i := range inFlight {
			sent.Go(func() {
				_, err := c.Send(context.Background(), request(srv.URL, fmt.Sprintf("w%d-%d", n, i)))
				require.NoError(t, err)
			})
		}
		arrived.Wait() // every request of the wave is in flight at once
		close(release)
		sent.Wait()
	}
	wave(1)
	require.EqualValues(t, inFlight, opened.Load(), "the first wave opens one connection per request in flight")
	wave(2)
	require.EqualValues(t, inFlight, opened.Load(), "the second wave reuses them")
}

func TestErrorMessage(t *testing.T) {
	t.Parallel()
	e := &cis.Error{StatusCode: 503, Body: `{"error":"down"}`}
	require.Equal(t, `cis: status 503 Service Unavailable: {"error":"down"}`, e.Error())
	wrapped := fmt.Errorf("send item: %w", &cis.Error{Permanent: true, Err: cis.ErrMissingSecret})
	require.True(t, cis.IsPermanent(wrapped))
	require.ErrorIs(t, wrapped, cis.ErrMissingSecret)
	require.False(t, cis.IsPermanent(errors.New("other")))
}

func TestRetryAfterHTTPDate(t *testing.T) {
	t.Parallel()
	later := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	srv, _ := statusServer(t, 503, map[string]string{"Retry-After": later})
	c, _ := newClient(t, func(cfg *cis.Config) { cfg.Retries = -1 })
	_, err := c.Send(t.Context(), request(srv.URL, "k1"))
	e := asError(t, err)
	require.Equal(t, 503, e.StatusCode)
	require.Equal(t, cis.DefaultRetryAfterMax, e.RetryAfter, "an hour away, capped")
}
