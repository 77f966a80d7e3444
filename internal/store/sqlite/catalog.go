package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/datapump/datapump/internal/catalog"
)

// billerColumns are the columns scanBiller reads, in order.
const billerColumns = `id, name, shard, mode, cutover_at, cis_base_url, cis_auth, cis_api_key_env,
    cis_api_key_header, cis_token_url, cis_client_id, cis_client_secret_env, cis_scopes,
    cis_timeout_ms, cis_rate_per_second, cis_max_concurrent, updated_at`

const billerUpsertSQL = `INSERT INTO datapump_biller (` + billerColumns + `)
VALUES (:id, :name, :shard, :mode, :cutover_at, :base_url, :auth, :api_key_env,
    :api_key_header, :token_url, :client_id, :client_secret_env, :scopes,
    :timeout_ms, :rate, :max_concurrent, ` + nowMS + `)
ON CONFLICT (id) DO UPDATE SET
    name = excluded.name, shard = excluded.shard, mode = excluded.mode, cutover_at = excluded.cutover_at,
    cis_base_url = excluded.cis_base_url, cis_auth = excluded.cis_auth,
    cis_api_key_env = excluded.cis_api_key_env, cis_api_key_header = excluded.cis_api_key_header,
    cis_token_url = excluded.cis_token_url, cis_client_id = excluded.cis_client_id,
    cis_client_secret_env = excluded.cis_client_secret_env, cis_scopes = excluded.cis_scopes,
    cis_timeout_ms = excluded.cis_timeout_ms, cis_rate_per_second = excluded.cis_rate_per_second,
    cis_max_concurrent = excluded.cis_max_concurrent, updated_at = excluded.updated_at`

func scanBiller(row scanner) (catalog.Biller, error) {
	var (
		b                  catalog.Biller
		mode, auth, scopes string
		cutover, updated   sql.NullInt64
		timeoutMS          int64
	)
	err := row.Scan(&b.ID, &b.Name, &b.Shard, &mode, &cutover, &b.CIS.BaseURL, &auth, &b.CIS.APIKeyEnv,
		&b.CIS.APIKeyHeader, &b.CIS.TokenURL, &b.CIS.ClientID, &b.CIS.ClientSecretEnv, &scopes,
		&timeoutMS, &b.CIS.RatePerSecond, &b.CIS.MaxConcurrent, &updated)
	if err != nil {
		return catalog.Biller{}, err
	}
	b.Mode, b.CIS.Auth = catalog.Mode(mode), catalog.AuthType(auth)
	b.CutoverAt, b.UpdatedAt = msTime(cutover), msTime(updated)
	b.CIS.Scopes = strings.Fields(scopes)
	b.CIS.Timeout = time.Duration(timeoutMS) * time.Millisecond
	return b, nil
}

// BillerList returns every biller of the catalog table, ordered by id.
func (s *Store) BillerList(ctx context.Context) ([]catalog.Biller, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+billerColumns+` FROM datapump_biller ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list billers: %w", err)
	}
	defer rows.Close()
	var out []catalog.Biller
	for rows.Next() {
		b, err := scanBiller(rows)
		if err != nil {
			return nil, fmt.Errorf("list billers: %w", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list billers: %w", err)
	}
	return out, nil
}

// BillerGet returns one biller; catalog.ErrBillerNotFound if absent.
func (s *Store) BillerGet(ctx context.Context, id string) (catalog.Biller, error) {
	return billerGet(ctx, s.read, id)
}

func billerGet(ctx context.Context, q queryer, id string) (catalog.Biller, error) {
	b, err := scanBiller(q.QueryRowContext(ctx, `SELECT `+billerColumns+` FROM datapump_biller WHERE id = :id`, sql.Named("id", id)))
	if errors.Is(err, sql.ErrNoRows) {
		return catalog.Biller{}, fmt.Errorf("biller %s: %w", id, catalog.ErrBillerNotFound)
	}
	if err != nil {
		return catalog.Biller{}, fmt.Errorf("biller %s: %w", id, err)
	}
	return b, nil
}

// BillerUpsert validates the biller and creates or replaces it. Scopes are
// stored separated by spaces (OAuth2 scopes contain none).
func (s *Store) BillerUpsert(ctx context.Context, b catalog.Biller) error {
	if err := b.Validate(); err != nil {
		return fmt.Errorf("upsert biller: %w", err)
	}
	for _, sc := range b.CIS.Scopes {
		if sc == "" || strings.ContainsAny(sc, " \t\r\n") {
			return fmt.Errorf("upsert biller %s: cis scopes: %q is not an OAuth2 scope", b.ID, sc)
		}
	}
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, billerUpsertSQL,
			sql.Named("id", b.ID), sql.Named("name", b.Name), sql.Named("shard", b.Shard), sql.Named("mode", string(b.Mode)),
			sql.Named("cutover_at", msArg(b.CutoverAt)), sql.Named("base_url", b.CIS.BaseURL), sql.Named("auth", string(b.CIS.Auth)),
			sql.Named("api_key_env", b.CIS.APIKeyEnv), sql.Named("api_key_header", b.CIS.APIKeyHeader),
			sql.Named("token_url", b.CIS.TokenURL), sql.Named("client_id", b.CIS.ClientID),
			sql.Named("client_secret_env", b.CIS.ClientSecretEnv), sql.Named("scopes", strings.Join(b.CIS.Scopes, " ")),
			sql.Named("timeout_ms", b.CIS.Timeout.Milliseconds()), sql.Named("rate", b.CIS.RatePerSecond),
			sql.Named("max_concurrent", b.CIS.MaxConcurrent))
		return err
	})
	if err != nil {
		return fmt.Errorf("upsert biller %s: %w", b.ID, err)
	}
	return nil
}

const billerSetModeSQL = `UPDATE datapump_biller SET mode = :mode,
    cutover_at = CASE WHEN :set_cutover THEN COALESCE(:cutover_at, ` + nowMS + `) ELSE cutover_at END,
    updated_at = ` + nowMS + `
WHERE id = :id`

// BillerSetMode changes the toggle. Moving from off to poll or direct sets
// the cut-over to p.CutoverAt, or to the database clock when it is zero;
// other moves keep the watermark.
func (s *Store) BillerSetMode(ctx context.Context, p catalog.SetModeParams) (catalog.Biller, error) {
	mode, err := catalog.ParseMode(string(p.Mode))
	if err != nil {
		return catalog.Biller{}, fmt.Errorf("set mode of biller %s: %w", p.BillerID, err)
	}
	var b catalog.Biller
	err = s.inWrite(ctx, func(tx *sql.Tx) error {
		cur, err := billerGet(ctx, tx, p.BillerID)
		if err != nil {
			return err
		}
		setCutover := cur.Mode == catalog.ModeOff && mode != catalog.ModeOff
		if _, err := tx.ExecContext(ctx, billerSetModeSQL, sql.Named("mode", string(mode)),
			sql.Named("set_cutover", setCutover), sql.Named("cutover_at", msArg(p.CutoverAt)), sql.Named("id", p.BillerID)); err != nil {
			return err
		}
		b, err = billerGet(ctx, tx, p.BillerID)
		return err
	})
	if err != nil {
		return catalog.Biller{}, fmt.Errorf("set mode of biller %s: %w", p.BillerID, err)
	}
	return b, nil
}
