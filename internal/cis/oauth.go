package cis

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// tokenConfig identifies a biller's OAuth2 client; a change (rotated secret,
// new scopes) replaces the cached token.
type tokenConfig struct {
	tokenURL, clientID, secret, scopes string
}

// tokenCache holds one biller's client-credentials token. Fetches are bounded
// by the caller's context (unlike oauth2.ReuseTokenSource, whose fetch
// context is fixed when it is built) and serialised so that many concurrent
// sends fetch one token.
type tokenCache struct {
	conf clientcredentials.Config
	lock chan struct{}
	tok  *oauth2.Token
}

// tokens returns the biller's token cache for cfg.
func (b *billerState) tokenCache(cfg tokenConfig, scopes []string) *tokenCache {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tokens == nil || b.tokenCfg != cfg {
		b.tokenCfg = cfg
		b.tokens = &tokenCache{
			conf: clientcredentials.Config{
				ClientID:     cfg.clientID,
				ClientSecret: cfg.secret,
				TokenURL:     cfg.tokenURL,
				Scopes:       scopes,
			},
			lock: make(chan struct{}, 1),
		}
	}
	return b.tokens
}

// token returns a valid token, fetching one when none is cached or it expires.
func (tc *tokenCache) token(ctx context.Context, client *http.Client) (*oauth2.Token, error) {
	select {
	case tc.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-tc.lock }()
	if tc.tok.Valid() {
		return tc.tok, nil
	}
	tok, err := tc.conf.Token(context.WithValue(ctx, oauth2.HTTPClient, client))
	if err != nil {
		return nil, err
	}
	tc.tok = tok
	return tok, nil
}

// invalidate drops tok if it is still the cached token (the CIS refused it).
func (tc *tokenCache) invalidate(tok *oauth2.Token) {
	tc.lock <- struct{}{}
	defer func() { <-tc.lock }()
	if tc.tok == tok {
		tc.tok = nil
	}
}

// tokenError classifies a failed token fetch like a CIS answer: a 4xx from
// the token endpoint (bad client id or secret) is permanent, anything else
// transient. The token endpoint's body never carries the client secret, but
// it is redacted anyway.
func tokenError(err error, secret string) *Error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		code := re.Response.StatusCode
		msg := strings.TrimSpace(re.ErrorCode + " " + re.ErrorDescription)
		if msg == "" {
			msg = string(re.Body)
		}
		return &Error{
			Permanent: !transientStatus(code),
			Err:       fmt.Errorf("oauth2 token: status %d: %s", code, redact(msg, secret)),
		}
	}
	// Network errors and timeouts: the secret travels in the request body or
	// basic auth, never in the URL these errors quote.
	return &Error{Err: fmt.Errorf("oauth2 token: %w", err)}
}
