package cis

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Sentinel errors.
var (
	// ErrCircuitOpen is wrapped by the transient error Send returns, without
	// calling the server, while a biller's circuit breaker is open (or
	// half-open with its probe already in flight).
	ErrCircuitOpen = errors.New("circuit breaker open")
	// ErrMissingSecret is wrapped by the permanent error Send returns when the
	// environment variable that should hold a biller's secret is empty. The
	// message names the variable, never a value.
	ErrMissingSecret = errors.New("missing secret")
	// ErrInvalidRequest is wrapped by the permanent error Send returns for a
	// request that can never succeed: a bad URL, no biller id, no idempotency
	// key, an unknown auth type.
	ErrInvalidRequest = errors.New("invalid cis request")
)

// maxErrorBody is how much of a response body an Error keeps.
const maxErrorBody = 512

// Error is what Send returns when an item was not delivered. Permanent
// errors must not be retried (the item fails); the others are transient and
// the item may be tried again later.
type Error struct {
	// StatusCode is the CIS's HTTP status, or 0 when no response arrived.
	StatusCode int
	// Permanent is true when retrying cannot help (4xx other than 408, 425
	// and 429, a bad URL, a missing secret).
	Permanent bool
	// Body is the start of the CIS's response body, with any secret removed.
	Body string
	// RetryAfter is the wait the CIS asked for (Retry-After), capped.
	RetryAfter time.Duration
	// Err is the cause when there is one (network error, timeout, sentinel).
	Err error

	// noTrip marks failures that say nothing about the CIS's health (the
	// caller gave up, a stale OAuth2 token) so the breaker ignores them.
	noTrip bool
}

// Error describes the failure without any secret.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("cis")
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": status %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.Body != "" {
		b.WriteString(": ")
		b.WriteString(e.Body)
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// IsPermanent reports whether err is a CIS error that retrying cannot fix.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent
}

// transientStatus reports whether an HTTP status is worth retrying.
func transientStatus(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return code >= 500
}

func permanentError(err error) *Error {
	return &Error{Permanent: true, Err: err}
}

// redact removes secret from s and cuts s to maxErrorBody bytes.
func redact(s, secret string) string {
	if secret != "" {
		s = strings.ReplaceAll(s, secret, "[REDACTED]")
	}
	s = strings.TrimSpace(s)
	if len(s) > maxErrorBody {
		s = strings.ToValidUTF8(s[:maxErrorBody], "") + "…"
	}
	return s
}
