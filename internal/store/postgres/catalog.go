package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/datapump/datapump/internal/catalog"
)

// billerColumns is the column list scanBiller reads, in its order.
const billerColumns = `id, name, shard, mode, cutover_at, cis_base_url, cis_auth, cis_api_key_env, cis_api_key_header,
	cis_token_url, cis_client_id, cis_client_secret_env, cis_scopes, cis_timeout_ms, cis_rate_per_second,
	cis_max_concurrent, updated_at`

func scanBiller(row pgx.Row) (catalog.Biller, error) {
	var (
		b         catalog.Biller
		mode      string
		auth      string
		cutover   *time.Time
		timeoutMS int64
	)
	err := row.Scan(&b.ID, &b.Name, &b.Shard, &mode, &cutover, &b.CIS.BaseURL, &auth, &b.CIS.APIKeyEnv,
		&b.CIS.APIKeyHeader, &b.CIS.TokenURL, &b.CIS.ClientID, &b.CIS.ClientSecretEnv, &b.CIS.Scopes,
		&timeoutMS, &b.CIS.RatePerSecond, &b.CIS.MaxConcurrent, &b.UpdatedAt)
	if err != nil {
		return catalog.Biller{}, err
	}
	b.Mode = catalog.Mode(mode)
	b.CIS.Auth = catalog.AuthType(auth)
	b.CutoverAt = utc(cutover)
	b.CIS.Timeout = time.Duration(timeoutMS) * time.Millisecond
	if len(b.CIS.Scopes) == 0 {
		b.CIS.Scopes = nil
	}
	b.UpdatedAt = b.UpdatedAt.UTC()
	return b, nil
}

// BillerList returns every biller, ordered by id (byte order).
func (s *Store) BillerList(ctx context.Context) ([]catalog.Biller, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+billerColumns+` FROM datapump_biller ORDER BY id COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("list billers: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (catalog.Biller, error) { return scanBiller(r) })
	if err != nil {
		return nil, fmt.Errorf("list billers: %w", err)
	}
	return out, nil
}

// BillerGet returns one biller; catalog.ErrBillerNotFound if absent.
func (s *Store) BillerGet(ctx context.Context, id string) (catalog.Biller, error) {
	b, err := scanBiller(s.pool.QueryRow(ctx, `SELECT `+billerColumns+` FROM datapump_biller WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return catalog.Biller{}, fmt.Errorf("get biller %s: %w", id, catalog.ErrBillerNotFound)
	}
	if err != nil {
		return catalog.Biller{}, fmt.Errorf("get biller %s: %w", id, err)
	}
	return b, nil
}

// BillerUpsert validates and creates or replaces a biller. The CIS timeout
// is kept to the millisecond.
func (s *Store) BillerUpsert(ctx context.Context, b catalog.Biller) error {
	if err := b.Validate(); err != nil {
		return fmt.Errorf("upsert biller: %w", err)
	}
	scopes := b.CIS.Scopes
	if scopes == nil {
		scopes = []string{}
	}
	_, err := s.pool.Exec(ctx, `
		INSERT INTO datapump_biller (`+billerColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, clock_timestamp())
		ON CONFLICT (id) DO UPDATE SET
			name = EXCLUDED.name, shard = EXCLUDED.shard, mode = EXCLUDED.mode, cutover_at = EXCLUDED.cutover_at,
			cis_base_url = EXCLUDED.cis_base_url, cis_auth = EXCLUDED.cis_auth,
			cis_api_key_env = EXCLUDED.cis_api_key_env, cis_api_key_header = EXCLUDED.cis_api_key_header,
			cis_token_url = EXCLUDED.cis_token_url, cis_client_id = EXCLUDED.cis_client_id,
			cis_client_secret_env = EXCLUDED.cis_client_secret_env, cis_scopes = EXCLUDED.cis_scopes,
			cis_timeout_ms = EXCLUDED.cis_timeout_ms, cis_rate_per_second = EXCLUDED.cis_rate_per_second,
			cis_max_concurrent = EXCLUDED.cis_max_concurrent, updated_at = EXCLUDED.updated_at`,
		b.ID, b.Name, b.Shard, string(b.Mode), nullTime(b.CutoverAt), b.CIS.BaseURL, string(b.CIS.Auth),
		b.CIS.APIKeyEnv, b.CIS.APIKeyHeader, b.CIS.TokenURL, b.CIS.ClientID, b.CIS.ClientSecretEnv, scopes,
		b.CIS.Timeout.Milliseconds(), b.CIS.RatePerSecond, b.CIS.MaxConcurrent)
	if err != nil {
		return fmt.Errorf("upsert biller %s: %w", b.ID, err)
	}
	return nil
}

// BillerSetMode changes a biller's toggle. Moving from off to poll or
// direct sets the cut-over to p.CutoverAt, or to the database clock when it
// is zero; any other move keeps the watermark.
func (s *Store) BillerSetMode(ctx context.Context, p catalog.SetModeParams) (catalog.Biller, error) {
	mode, err := catalog.ParseMode(string(p.Mode))
	if err != nil {
		return catalog.Biller{}, fmt.Errorf("set mode of biller %s: %w", p.BillerID, err)
	}
	b, err := scanBiller(s.pool.QueryRow(ctx, `
		UPDATE datapump_biller
		SET mode = $2,
			cutover_at = CASE WHEN mode = 'off' AND $2 <> 'off' THEN coalesce($3, clock_timestamp()) ELSE cutover_at END,
			updated_at = clock_timestamp()
		WHERE id = $1
		RETURNING `+billerColumns,
		p.BillerID, string(mode), nullTime(p.CutoverAt)))
	if errors.Is(err, pgx.ErrNoRows) {
		return catalog.Biller{}, fmt.Errorf("set mode of biller %s: %w", p.BillerID, catalog.ErrBillerNotFound)
	}
	if err != nil {
		return catalog.Biller{}, fmt.Errorf("set mode of biller %s: %w", p.BillerID, err)
	}
	return b, nil
}
