// Package cis delivers one work item to a biller's CIS API: an HTTP POST of
// the item's JSON with an Idempotency-Key, the biller's authentication (API
// key or OAuth2 client credentials), a timeout, in-call retries with
// exponential backoff and jitter on transient failures, and per biller a
// rate limit, a cap on in-flight requests and a circuit breaker.
//
// Delivery is at-least-once: a request that timed out may have been
// accepted, so the CIS is expected to deduplicate on the Idempotency-Key.
// Send tells the caller whether a failure is permanent (the item fails) or
// transient (the item may be tried again later); see Error.
//
// Secrets are read from the environment on every Send (so a rotated secret
// takes effect without a restart) and never appear in errors or logs.
package cis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/sony/gobreaker/v2"
	"golang.org/x/oauth2"

	"github.com/datapump/datapump/internal/catalog"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultTimeout             = 10 * time.Second
	DefaultRetries             = 2
	DefaultBackoffInitial      = 200 * time.Millisecond
	DefaultBackoffMax          = 5 * time.Second
	DefaultRetryAfterMax       = 30 * time.Second
	DefaultMaxConcurrent       = 16
	DefaultBreakerFailures     = 5
	DefaultBreakerOpenFor      = 30 * time.Second
	DefaultMaxIdleConnsPerHost = 64
	// DefaultAPIKeyHeader carries the API key when the endpoint names none.
	DefaultAPIKeyHeader = "X-Api-Key"
)

// maxDrain bounds how much of a response body is read (to reuse the
// connection, or to quote it in an Error).
const maxDrain = 64 << 10

// Config configures a Client. Zero fields take the defaults above.
type Config struct {
	// DefaultTimeout bounds one request when the endpoint sets no Timeout.
	DefaultTimeout time.Duration
	// Retries is the number of extra in-call attempts after a transient
	// failure (0 means DefaultRetries; negative means none).
	Retries int
	// BackoffInitial and BackoffMax shape the exponential backoff (factor 2,
	// ±50% jitter) between attempts.
	BackoffInitial, BackoffMax time.Duration
	// RetryAfterMax caps the wait a CIS may ask for with Retry-After.
	RetryAfterMax time.Duration
	// DefaultRatePerSecond limits requests per biller when the endpoint sets
	// no RatePerSecond; 0 means unlimited.
	DefaultRatePerSecond float64
	// DefaultMaxConcurrent caps in-flight requests per biller when the
	// endpoint sets no MaxConcurrent.
	DefaultMaxConcurrent int
	// BreakerFailures is the number of consecutive transient failures that
	// open a biller's circuit breaker.
	BreakerFailures int
	// BreakerOpenFor is how long an open breaker refuses calls before it lets
	// one probe through (half-open).
	BreakerOpenFor time.Duration
	// MaxIdleConnsPerHost is how many connections to one host the default
	// HTTPClient keeps open between requests (default 64). Set it to the
	// most requests the process can have in flight: many billers may share
	// one CIS host, and every request beyond the idle pool's size opens a
	// new connection and closes it after.
	MaxIdleConnsPerHost int
	// HTTPClient sends the requests. The default does not follow redirects,
	// so a redirect cannot carry an API key to another host.
	HTTPClient *http.Client
	// Getenv reads secrets (default os.Getenv).
	Getenv func(string) string
	// Logger receives retries and breaker state changes (default: discard).
	Logger *slog.Logger
}

// Validate checks the configuration and names the bad field.
func (cfg Config) Validate() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"default_timeout", cfg.DefaultTimeout},
		{"backoff_initial", cfg.BackoffInitial},
		{"backoff_max", cfg.BackoffMax},
		{"retry_after_max", cfg.RetryAfterMax},
		{"breaker_open_for", cfg.BreakerOpenFor},
	} {
		if d.v < 0 {
			return fmt.Errorf("cis: %s: %s must not be negative", d.name, d.v)
		}
	}
	switch {
	case cfg.DefaultRatePerSecond < 0:
		return fmt.Errorf("cis: default_rate_per_second: %g must not be negative", cfg.DefaultRatePerSecond)
	case cfg.MaxIdleConnsPerHost < 0:
		return fmt.Errorf("cis: max_idle_conns_per_host: %d must not be negative", cfg.MaxIdleConnsPerHost)
	case cfg.DefaultMaxConcurrent < 0:
		return fmt.Errorf("cis: default_max_concurrent: %d must not be negative", cfg.DefaultMaxConcurrent)
	case cfg.BreakerFailures < 0:
		return fmt.Errorf("cis: breaker_failures: %d must not be negative", cfg.BreakerFailures)
	case cfg.BackoffInitial > 0 && cfg.BackoffMax > 0 && cfg.BackoffInitial > cfg.BackoffMax:
		return fmt.Errorf("cis: backoff_initial: %s is above backoff_max %s", cfg.BackoffInitial, cfg.BackoffMax)
	}
	return nil
}

func (cfg Config) withDefaults() Config {
	if cfg.DefaultTimeout == 0 {
		cfg.DefaultTimeout = DefaultTimeout
	}
	if cfg.Retries == 0 {
		cfg.Retries = DefaultRetries
	} else if cfg.Retries < 0 {
		cfg.Retries = 0
	}
	if cfg.BackoffInitial == 0 {
		cfg.BackoffInitial = min(DefaultBackoffInitial, max(cfg.BackoffMax, time.Millisecond))
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffInitial)
	}
	if cfg.RetryAfterMax == 0 {
		cfg.RetryAfterMax = DefaultRetryAfterMax
	}
	if cfg.DefaultMaxConcurrent == 0 {
		cfg.DefaultMaxConcurrent = DefaultMaxConcurrent
	}
	if cfg.BreakerFailures == 0 {
		cfg.BreakerFailures = DefaultBreakerFailures
	}
	if cfg.BreakerOpenFor == 0 {
		cfg.BreakerOpenFor = DefaultBreakerOpenFor
	}
	if cfg.MaxIdleConnsPerHost == 0 {
		cfg.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	if cfg.HTTPClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		// No cap across hosts (the default's 100 would close connections
		// to billers' hosts while their requests keep coming).
		tr.MaxIdleConns = 0
		tr.MaxIdleConnsPerHost = cfg.MaxIdleConnsPerHost
		cfg.HTTPClient = &http.Client{
			Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

// Client sends items to CIS APIs. It is safe for concurrent use; per-biller
// limits and breakers are shared by every caller of one Client.
type Client struct {
	cfg  Config
	http *http.Client
	log  *slog.Logger

	mu      sync.Mutex
	billers map[string]*billerState
	targets sync.Map // targetKey → builtTarget
}

// New validates cfg, applies defaults and returns a Client.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Client{
		cfg:     cfg,
		http:    cfg.HTTPClient,
		log:     cfg.Logger,
		billers: map[string]*billerState{},
	}, nil
}

// Request is one item delivery.
type Request struct {
	// BillerID selects the per-biller limits, breaker and token cache; it is
	// also sent as header X-Biller-Id.
	BillerID string
	// Endpoint is the biller's CIS endpoint from the catalog.
	Endpoint catalog.CISEndpoint
	// Path is appended to Endpoint.BaseURL ("/payments").
	Path string
	// IdempotencyKey is sent as header Idempotency-Key (the item's MessageID).
	IdempotencyKey string
	// Body is the JSON payload.
	Body []byte
	// Header holds extra headers (traceparent, …); it cannot override the
	// content type, idempotency key or authentication.
	Header http.Header
}

// Result describes a Send, successful or not.
type Result struct {
	// StatusCode is the last HTTP status received (0 if none).
	StatusCode int
	// Attempts is the number of HTTP requests made.
	Attempts int
}

// Send POSTs the item to the biller's CIS. It returns nil once the CIS
// answered 2xx (the body of a 2xx answer is not interpreted). Otherwise the
// error is an *Error: permanent for a 4xx other than 408, 425 and 429, a bad
// URL or a missing secret; transient (after Config.Retries extra attempts)
// for network errors, timeouts, 408, 425, 429, 5xx, an open circuit breaker
// or the end of ctx, which bounds the whole call including waits.
func (c *Client) Send(ctx context.Context, r Request) (Result, error) {
	var res Result
	target, shown, err := c.target(r)
	if err != nil {
		return res, permanentError(err)
	}
	ep := r.Endpoint
	maxConcurrent := ep.MaxConcurrent
	if maxConcurrent <= 0 {
		maxConcurrent = c.cfg.DefaultMaxConcurrent
	}
	ratePerSecond := ep.RatePerSecond
	if ratePerSecond <= 0 {
		ratePerSecond = c.cfg.DefaultRatePerSecond
	}
	timeout := ep.Timeout
	if timeout <= 0 {
		timeout = c.cfg.DefaultTimeout
	}
	b := c.biller(r.BillerID, ratePerSecond, maxConcurrent)
	au, err := c.authFor(r, b)
	if err != nil {
		return res, permanentError(err)
	}

	var last *Error
	refreshed := false
	op := func() (struct{}, error) {
		if ctx.Err() != nil {
			return struct{}{}, backoff.Permanent(callerGone(ctx, last))
		}
		if b.breaker.State() == gobreaker.StateOpen {
			return struct{}{}, backoff.Permanent(circuitOpen(r.BillerID))
		}
		release, err := b.acquire(ctx)
		if err != nil {
			return struct{}{}, backoff.Permanent(callerGone(ctx, last))
		}
		defer release()
		if err := b.wait(ctx); err != nil {
			if ctx.Err() != nil {
				return struct{}{}, backoff.Permanent(callerGone(ctx, last))
			}
			// The next token comes after ctx's deadline.
			return struct{}{}, backoff.Permanent(&Error{Err: fmt.Errorf("biller %s: rate limit: %w", r.BillerID, err), noTrip: true})
		}
		_, err = b.breaker.Execute(func() (struct{}, error) {
			res.Attempts++
			status, tok, e := c.attempt(ctx, r, target, shown, timeout, au, res.Attempts)
			res.StatusCode = status
			if e == nil {
				return struct{}{}, nil
			}
			if status == http.StatusUnauthorized && tok != nil && !refreshed {
				// The token may have been revoked before it expired: fetch
				// a new one and try once more.
				refreshed = true
				au.tokens.invalidate(tok)
				e.Permanent, e.noTrip = false, true
			}
			return struct{}{}, e
		})
		if err == nil {
			return struct{}{}, nil
		}
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			return struct{}{}, backoff.Permanent(circuitOpen(r.BillerID))
		}
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Err: err}
		}
		last = e
		if e.Permanent || ctx.Err() != nil {
			return struct{}{}, backoff.Permanent(e)
		}
		if e.RetryAfter > 0 {
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < e.RetryAfter {
				return struct{}{}, backoff.Permanent(e)
			}
			return struct{}{}, errors.Join(e, &backoff.RetryAfterError{Duration: e.RetryAfter})
		}
		return struct{}{}, e
	}

	_, err = backoff.Retry(ctx, op,
		backoff.WithBackOff(&deadlineBackOff{ctx: ctx, BackOff: &backoff.ExponentialBackOff{
			InitialInterval:     c.cfg.BackoffInitial,
			RandomizationFactor: 0.5,
			Multiplier:          2,
			MaxInterval:         c.cfg.BackoffMax,
		}}),
		backoff.WithMaxTries(uint(c.cfg.Retries+1)),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) {
			c.log.Debug("cis attempt failed, retrying", slog.String("biller", r.BillerID), slog.String("item", r.IdempotencyKey),
				slog.Int("attempt", res.Attempts), slog.Duration("wait", wait), slog.String("error", last.Error()))
		}),
	)
	if err == nil {
		return res, nil
	}
	var e *Error
	if errors.As(err, &e) {
		return res, e
	}
	// ctx ended while waiting between attempts.
	return res, callerGone(ctx, last)
}

// target returns the request URL, and shown, the same URL without user
// info or query, safe to quote in errors. Each base URL and path is parsed
// once: the client keeps what it built per pair (a handful per biller).
func (c *Client) target(r Request) (target, shown string, err error) {
	if r.BillerID == "" {
		return "", "", fmt.Errorf("%w: biller id: required", ErrInvalidRequest)
	}
	if r.IdempotencyKey == "" {
		return "", "", fmt.Errorf("%w: biller %s: idempotency key: required", ErrInvalidRequest, r.BillerID)
	}
	key := targetKey{base: r.Endpoint.BaseURL, path: r.Path}
	if t, ok := c.targets.Load(key); ok {
		t := t.(builtTarget)
		return t.target, t.shown, nil
	}
	u, err := url.Parse(r.Endpoint.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The raw URL is not quoted: it could hold credentials.
		return "", "", fmt.Errorf("%w: biller %s: base url: not an absolute http(s) URL", ErrInvalidRequest, r.BillerID)
	}
	if r.Path != "" {
		u = u.JoinPath(r.Path)
	}
	safe := *u
	safe.User, safe.RawQuery, safe.ForceQuery = nil, "", false
	t := builtTarget{target: u.String(), shown: safe.String()}
	c.targets.Store(key, t)
	return t.target, t.shown, nil
}

// targetKey and builtTarget are what Client.target keeps per base URL and path.
type targetKey struct{ base, path string }

type builtTarget struct{ target, shown string }

// authorizer applies one biller's authentication to a request.
type authorizer struct {
	header, key string      // api_key
	tokens      *tokenCache // oauth2
	secret      string      // redacted from anything quoted
}

func (c *Client) authFor(r Request, b *billerState) (authorizer, error) {
	ep := r.Endpoint
	switch ep.Auth {
	case "", catalog.AuthNone:
		return authorizer{}, nil
	case catalog.AuthAPIKey:
		key, err := c.secret(r.BillerID, "api_key_env", ep.APIKeyEnv)
		if err != nil {
			return authorizer{}, err
		}
		header := ep.APIKeyHeader
		if header == "" {
			header = DefaultAPIKeyHeader
		}
		return authorizer{header: header, key: key, secret: key}, nil
	case catalog.AuthOAuth2:
		secret, err := c.secret(r.BillerID, "client_secret_env", ep.ClientSecretEnv)
		if err != nil {
			return authorizer{}, err
		}
		if u, err := url.Parse(ep.TokenURL); err != nil || u.Host == "" {
			return authorizer{}, fmt.Errorf("%w: biller %s: token url: not an absolute URL", ErrInvalidRequest, r.BillerID)
		}
		cfg := tokenConfig{tokenURL: ep.TokenURL, clientID: ep.ClientID, secret: secret, scopes: strings.Join(ep.Scopes, " ")}
		return authorizer{tokens: b.tokenCache(cfg, ep.Scopes), secret: secret}, nil
	}
	return authorizer{}, fmt.Errorf("%w: biller %s: auth: unknown type %q", ErrInvalidRequest, r.BillerID, ep.Auth)
}

// secret reads the environment variable env; an empty value is an error
// naming the variable.
func (c *Client) secret(billerID, field, env string) (string, error) {
	if env == "" {
		return "", fmt.Errorf("%w: biller %s: %s: required", ErrMissingSecret, billerID, field)
	}
	v := c.cfg.Getenv(env)
	if v == "" {
		return "", fmt.Errorf("%w: biller %s: environment variable %s is empty or unset", ErrMissingSecret, billerID, env)
	}
	return v, nil
}

// AttemptHeader carries the attempt number of a request within one Send
// (1 for the first): a CIS, or an operator reading its logs, can tell a
// resend after a lost or late answer from a second delivery of the item.
const AttemptHeader = "Datapump-Attempt"

// attempt makes one HTTP request, the n-th of its Send. It returns the
// status (0 without an answer) and, under OAuth2, the token it sent.
func (c *Client) attempt(ctx context.Context, r Request, target, shown string, timeout time.Duration, au authorizer, n int) (int, *oauth2.Token, *Error) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, target, bytes.NewReader(r.Body))
	if err != nil {
		return 0, nil, permanentError(fmt.Errorf("%w: biller %s: build request for %s", ErrInvalidRequest, r.BillerID, shown))
	}
	// A fresh map sized for the caller's headers and the client's own, which
	// are set last so that the caller's cannot override them.
	req.Header = make(http.Header, len(r.Header)+8)
	for k, v := range r.Header {
		req.Header[k] = slices.Clone(v)
	}
	req.Header["Content-Type"] = []string{"application/json"}
	req.Header["Accept"] = []string{"application/json"}
	req.Header["User-Agent"] = []string{"datapump"}
	req.Header["Idempotency-Key"] = []string{r.IdempotencyKey}
	req.Header[AttemptHeader] = []string{strconv.Itoa(n)}
	req.Header["X-Biller-Id"] = []string{r.BillerID}

	var tok *oauth2.Token
	switch {
	case au.tokens != nil:
		tok, err = au.tokens.token(actx, c.http)
		if err != nil {
			if ctx.Err() != nil {
				return 0, nil, callerGone(ctx, nil)
			}
			return 0, nil, tokenError(err, au.secret)
		}
		tok.SetAuthHeader(req)
	case au.header != "":
		req.Header.Set(au.header, au.key)
	}

	resp, err := c.http.Do(req)
	if err != nil {
		return 0, tok, transportError(ctx, err, shown, timeout)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// Read to the end (bounded) so the connection is reused; the body
		// of a 2xx answer is not interpreted.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
		return resp.StatusCode, tok, nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxDrain))
	e := &Error{
		StatusCode: resp.StatusCode,
		Permanent:  !transientStatus(resp.StatusCode),
		Body:       redact(string(body), au.secret),
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), c.cfg.RetryAfterMax)
	}
	return resp.StatusCode, tok, e
}

// transportError classifies a request that got no answer. The cause is
// unwrapped from *url.Error, which would quote the full URL.
func transportError(ctx context.Context, err error, shown string, timeout time.Duration) *Error {
	if ctx.Err() != nil {
		return callerGone(ctx, nil)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) || (ue != nil && ue.Timeout()) {
		return &Error{Err: fmt.Errorf("post %s: no answer within %s: %w", shown, timeout, context.DeadlineExceeded)}
	}
	return &Error{Err: fmt.Errorf("post %s: %w", shown, err)}
}

// callerGone is the transient error for a call whose ctx ended; it keeps the
// last attempt's answer when there was one. The breaker ignores it.
func callerGone(ctx context.Context, last *Error) *Error {
	cause := context.Cause(ctx)
	if cause == nil {
		cause = context.Canceled
	}
	if last == nil {
		return &Error{Err: cause, noTrip: true}
	}
	return &Error{StatusCode: last.StatusCode, Body: last.Body, RetryAfter: last.RetryAfter, Err: cause, noTrip: true}
}

func circuitOpen(billerID string) *Error {
	return &Error{Err: fmt.Errorf("biller %s: %w", billerID, ErrCircuitOpen), noTrip: true}
}

// retryAfter parses a Retry-After value (seconds or an HTTP date), capped.
func retryAfter(v string, ceiling time.Duration) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	return min(max(d, 0), ceiling)
}

// deadlineBackOff stops retrying when the next wait would outlast ctx: the
// caller gets the last answer now rather than a bare deadline error later.
type deadlineBackOff struct {
	ctx context.Context
	backoff.BackOff
}

// NextBackOff returns the wrapped backoff, or Stop past ctx's deadline.
func (d *deadlineBackOff) NextBackOff() time.Duration {
	next := d.BackOff.NextBackOff()
	if dl, ok := d.ctx.Deadline(); ok && next != backoff.Stop && time.Until(dl) < next {
		return backoff.Stop
	}
	return next
}
