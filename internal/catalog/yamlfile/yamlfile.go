// Package yamlfile is a read-only catalog.Catalog kept in a YAML file:
//
//	billers:
//	  - id: b001
//	    name: Acme Water
//	    shard: shard1
//	    mode: poll            # off | poll | direct
//	    cutover_at: 2026-01-01T00:00:00Z
//	    cis:
//	      base_url: https://cis.acme.example
//	      auth: api_key       # none | api_key | oauth2
//	      api_key_env: ACME_CIS_KEY
//	      api_key_header: X-Api-Key
//	      timeout: 10s
//	      rate_per_second: 50
//	      max_concurrent: 8
//
// Unknown keys, invalid billers and duplicate ids are refused at Load with an
// error naming the key, biller or field. Changes are made by editing the file
// and restarting; BillerUpsert and BillerSetMode return catalog.ErrReadOnly.
package yamlfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/datapump/datapump/internal/catalog"
)

// Catalog is the billers of one YAML file, as read by Load.
type Catalog struct {
	billers []catalog.Biller // ordered by id
}

var _ catalog.Catalog = (*Catalog)(nil)

type fileDoc struct {
	Billers []billerDoc `yaml:"billers"`
}

type billerDoc struct {
	ID        string    `yaml:"id"`
	Name      string    `yaml:"name,omitempty"`
	Shard     string    `yaml:"shard"`
	Mode      string    `yaml:"mode"`
	CutoverAt time.Time `yaml:"cutover_at,omitempty"`
	CIS       cisDoc    `yaml:"cis,omitempty"`
}

type cisDoc struct {
	BaseURL         string        `yaml:"base_url,omitempty"`
	Auth            string        `yaml:"auth,omitempty"`
	APIKeyEnv       string        `yaml:"api_key_env,omitempty"`
	APIKeyHeader    string        `yaml:"api_key_header,omitempty"`
	TokenURL        string        `yaml:"token_url,omitempty"`
	ClientID        string        `yaml:"client_id,omitempty"`
	ClientSecretEnv string        `yaml:"client_secret_env,omitempty"`
	Scopes          []string      `yaml:"scopes,omitempty,flow"`
	Timeout         time.Duration `yaml:"timeout,omitempty"`
	RatePerSecond   float64       `yaml:"rate_per_second,omitempty"`
	MaxConcurrent   int           `yaml:"max_concurrent,omitempty"`
}

// Load reads and validates the catalog file at path.
func Load(path string) (*Catalog, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load catalog: %w", err)
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load catalog: %w", err)
	}
	c, err := Parse(data, info.ModTime())
	if err != nil {
		return nil, fmt.Errorf("load catalog %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates a catalog document. Every biller's UpdatedAt
// is set to updatedAt (Load passes the file's modification time).
func Parse(data []byte, updatedAt time.Time) (*Catalog, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc fileDoc
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("billers: required (the file is empty)")
		}
		return nil, readableDecodeError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}

	c := &Catalog{billers: make([]catalog.Biller, 0, len(doc.Billers))}
	seen := make(map[string]int, len(doc.Billers))
	for i, d := range doc.Billers {
		b := d.biller(updatedAt)
		if err := validate(b); err != nil {
			if b.ID == "" {
				return nil, fmt.Errorf("billers[%d]: %w", i, err)
			}
			return nil, err
		}
		if first, dup := seen[b.ID]; dup {
			return nil, fmt.Errorf("biller %s: id: defined twice (billers[%d] and billers[%d])", b.ID, first, i)
		}
		seen[b.ID] = i
		c.billers = append(c.billers, b)
	}
	sort.Slice(c.billers, func(i, j int) bool { return c.billers[i].ID < c.billers[j].ID })
	return c, nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// validate checks the biller and its CIS endpoint, naming the biller and field.
func validate(b catalog.Biller) error {
	if err := b.Validate(); err != nil {
		return err
	}
	fail := func(field, format string, args ...any) error {
		return fmt.Errorf("biller %s: cis.%s: %s", b.ID, field, fmt.Sprintf(format, args...))
	}
	cis := b.CIS
	if cis.BaseURL == "" {
		if b.Mode != catalog.ModeOff {
			return fail("base_url", "required when mode is %s", b.Mode)
		}
	} else if u, err := url.Parse(cis.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fail("base_url", "%q is not an absolute http(s) URL", cis.BaseURL)
	}
	switch cis.Auth {
	case "", catalog.AuthNone:
	case catalog.AuthAPIKey:
		if cis.APIKeyEnv == "" {
			return fail("api_key_env", "required when auth is api_key")
		}
	case catalog.AuthOAuth2:
		if cis.TokenURL == "" {
			return fail("token_url", "required when auth is oauth2")
		}
		if u, err := url.Parse(cis.TokenURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fail("token_url", "%q is not an absolute http(s) URL", cis.TokenURL)
		}
		if cis.ClientID == "" {
			return fail("client_id", "required when auth is oauth2")
		}
		if cis.ClientSecretEnv == "" {
			return fail("client_secret_env", "required when auth is oauth2")
		}
	default:
		return fail("auth", "%q is not none, api_key or oauth2", cis.Auth)
	}
	for _, env := range []struct{ field, v string }{{"api_key_env", cis.APIKeyEnv}, {"client_secret_env", cis.ClientSecretEnv}} {
		if env.v != "" && !envName.MatchString(env.v) {
			return fail(env.field, "%q is not an environment variable name", env.v)
		}
	}
	if cis.Timeout < 0 {
		return fail("timeout", "%s must not be negative", cis.Timeout)
	}
	if cis.RatePerSecond < 0 {
		return fail("rate_per_second", "%g must not be negative", cis.RatePerSecond)
	}
	if cis.MaxConcurrent < 0 {
		return fail("max_concurrent", "%d must not be negative", cis.MaxConcurrent)
	}
	return nil
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type yamlfile\.(\w+)`)

// readableDecodeError names unknown keys by where they sit in the file
// rather than by this package's Go types.
func readableDecodeError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	where := map[string]string{"fileDoc": "at top level", "billerDoc": "in a biller", "cisDoc": "in cis"}
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		msgs[i] = unknownField.ReplaceAllStringFunc(m, func(s string) string {
			sub := unknownField.FindStringSubmatch(s)
			return fmt.Sprintf("unknown key %q %s", sub[1], where[sub[2]])
		})
	}
	return errors.New(strings.Join(msgs, "; "))
}

func (d billerDoc) biller(updatedAt time.Time) catalog.Biller {
	return catalog.Biller{
		ID:        d.ID,
		Name:      d.Name,
		Shard:     d.Shard,
		Mode:      catalog.Mode(d.Mode),
		CutoverAt: d.CutoverAt,
		CIS: catalog.CISEndpoint{
			BaseURL:         d.CIS.BaseURL,
			Auth:            catalog.AuthType(d.CIS.Auth),
			APIKeyEnv:       d.CIS.APIKeyEnv,
			APIKeyHeader:    d.CIS.APIKeyHeader,
			TokenURL:        d.CIS.TokenURL,
			ClientID:        d.CIS.ClientID,
			ClientSecretEnv: d.CIS.ClientSecretEnv,
			Scopes:          d.CIS.Scopes,
			Timeout:         d.CIS.Timeout,
			RatePerSecond:   d.CIS.RatePerSecond,
			MaxConcurrent:   d.CIS.MaxConcurrent,
		},
		UpdatedAt: updatedAt,
	}
}

func docOf(b catalog.Biller) billerDoc {
	return billerDoc{
		ID:        b.ID,
		Name:      b.Name,
		Shard:     b.Shard,
		Mode:      string(b.Mode),
		CutoverAt: b.CutoverAt,
		CIS: cisDoc{
			BaseURL:         b.CIS.BaseURL,
			Auth:            string(b.CIS.Auth),
			APIKeyEnv:       b.CIS.APIKeyEnv,
			APIKeyHeader:    b.CIS.APIKeyHeader,
			TokenURL:        b.CIS.TokenURL,
			ClientID:        b.CIS.ClientID,
			ClientSecretEnv: b.CIS.ClientSecretEnv,
			Scopes:          b.CIS.Scopes,
			Timeout:         b.CIS.Timeout,
			RatePerSecond:   b.CIS.RatePerSecond,
			MaxConcurrent:   b.CIS.MaxConcurrent,
		},
	}
}

// Marshal renders billers as a catalog document that Parse reads back.
// UpdatedAt is not written.
func Marshal(billers []catalog.Biller) ([]byte, error) {
	doc := fileDoc{Billers: make([]billerDoc, 0, len(billers))}
	for _, b := range billers {
		doc.Billers = append(doc.Billers, docOf(b))
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode catalog: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode catalog: %w", err)
	}
	return buf.Bytes(), nil
}

// Write writes billers to path as a catalog file (seeding, tests, exports).
// It does not validate them; Load does.
func Write(path string, billers []catalog.Biller) error {
	data, err := Marshal(billers)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write catalog: %w", err)
	}
	return nil
}

// BillerList returns every biller, ordered by id.
func (c *Catalog) BillerList(ctx context.Context) ([]catalog.Biller, error) {
	out := make([]catalog.Biller, len(c.billers))
	for i, b := range c.billers {
		out[i] = clone(b)
	}
	return out, nil
}

// BillerGet returns one biller; catalog.ErrBillerNotFound if absent.
func (c *Catalog) BillerGet(ctx context.Context, id string) (catalog.Biller, error) {
	i, ok := slices.BinarySearchFunc(c.billers, id, func(b catalog.Biller, id string) int {
		return strings.Compare(b.ID, id)
	})
	if !ok {
		return catalog.Biller{}, fmt.Errorf("get biller %s: %w", id, catalog.ErrBillerNotFound)
	}
	return clone(c.billers[i]), nil
}

// BillerUpsert returns catalog.ErrReadOnly: edit the file instead.
func (c *Catalog) BillerUpsert(ctx context.Context, b catalog.Biller) error {
	return fmt.Errorf("upsert biller %s: %w", b.ID, catalog.ErrReadOnly)
}

// BillerSetMode returns catalog.ErrReadOnly: edit the file instead.
func (c *Catalog) BillerSetMode(ctx context.Context, p catalog.SetModeParams) (catalog.Biller, error) {
	return catalog.Biller{}, fmt.Errorf("set mode of biller %s: %w", p.BillerID, catalog.ErrReadOnly)
}

func clone(b catalog.Biller) catalog.Biller {
	b.CIS.Scopes = slices.Clone(b.CIS.Scopes)
	return b
}
