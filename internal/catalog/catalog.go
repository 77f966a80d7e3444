// Package catalog is the port to the list of billers: which shard holds
// each biller's items, which pump owns it (the per-biller toggle), the
// cut-over watermark and the biller's CIS endpoint.
//
// Adapters: a table in a config database (store/sqlite, store/postgres) and
// a read-only YAML file (catalog/yamlfile). All pass catalogtest.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Mode is the per-biller feature toggle.
type Mode string

// Toggle modes.
const (
	// ModeOff: the old pump owns the biller; this pump touches nothing of it.
	ModeOff Mode = "off"
	// ModePoll: the publisher finds the biller's pending items by polling.
	ModePoll Mode = "poll"
	// ModeDirect: source applications publish item messages themselves; the
	// pump consumes them and runs a reconcile sweep for unannounced items.
	ModeDirect Mode = "direct"
)

// ParseMode parses a mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeOff, ModePoll, ModeDirect:
		return m, nil
	}
	return "", fmt.Errorf("%w: %q (want off, poll or direct)", ErrInvalidMode, s)
}

// Sentinel errors.
var (
	ErrBillerNotFound = errors.New("biller not found")
	ErrInvalidMode    = errors.New("invalid mode")
	ErrReadOnly       = errors.New("catalog is read-only")
)

// AuthType says how the pump authenticates to a biller's CIS.
type AuthType string

// Auth types.
const (
	AuthNone   AuthType = "none"
	AuthAPIKey AuthType = "api_key"
	AuthOAuth2 AuthType = "oauth2"
)

// CISEndpoint is where and how a biller's CIS API is called. Secrets are
// never stored here: only the names of the environment variables that hold them.
type CISEndpoint struct {
	BaseURL string   `json:"base_url"`
	Auth    AuthType `json:"auth"`
	// APIKeyEnv names the environment variable holding the API key.
	APIKeyEnv string `json:"api_key_env"`
	// APIKeyHeader is the header the key is sent in (default "X-Api-Key").
	APIKeyHeader string `json:"api_key_header"`
	// OAuth2 client-credentials settings.
	TokenURL        string   `json:"token_url"`
	ClientID        string   `json:"client_id"`
	ClientSecretEnv string   `json:"client_secret_env"`
	Scopes          []string `json:"scopes"`
	// Timeout per request; zero means the pump's default.
	Timeout time.Duration `json:"timeout"`
	// RatePerSecond limits requests to this biller; zero means the default.
	RatePerSecond float64 `json:"rate_per_second"`
	// MaxConcurrent caps in-flight requests to this biller; zero means the default.
	MaxConcurrent int `json:"max_concurrent"`
}

// Biller is one biller of the catalog.
type Biller struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Shard string `json:"shard"`
	Mode  Mode   `json:"mode"`
	// CutoverAt: items created before it belong to the old pump. Set when
	// the biller is switched to poll or direct.
	CutoverAt time.Time   `json:"cutover_at"`
	CIS       CISEndpoint `json:"cis"`
	UpdatedAt time.Time   `json:"updated_at"`
}

// Validate checks the fields a biller must have.
func (b Biller) Validate() error {
	if b.ID == "" {
		return errors.New("id: required")
	}
	if b.Shard == "" {
		return fmt.Errorf("biller %s: shard: required", b.ID)
	}
	if _, err := ParseMode(string(b.Mode)); err != nil {
		return fmt.Errorf("biller %s: mode: %w", b.ID, err)
	}
	return nil
}

// SetModeParams changes a biller's toggle. When the biller moves from off to
// poll or direct, the cut-over watermark is set to CutoverAt, or to the
// catalog database's clock when CutoverAt is zero; a move between poll and
// direct keeps the watermark.
type SetModeParams struct {
	BillerID  string
	Mode      Mode
	CutoverAt time.Time
}

// Catalog reads and changes billers.
type Catalog interface {
	// BillerList returns every biller, ordered by id.
	BillerList(ctx context.Context) ([]Biller, error)
	// BillerGet returns one biller; ErrBillerNotFound if absent.
	BillerGet(ctx context.Context, id string) (Biller, error)
	// BillerUpsert creates or replaces a biller (seeding, tests, operators).
	BillerUpsert(ctx context.Context, b Biller) error
	// BillerSetMode changes the toggle (see SetModeParams) and returns the biller.
	BillerSetMode(ctx context.Context, p SetModeParams) (Biller, error)
}
