package sqlserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/datapump/datapump/internal/catalog"
)

// billerColumns is the column list scanBiller reads, in its order.
const billerColumns = `id, name, shard, mode, cutover_at, cis_base_url, cis_auth, cis_api_key_env, cis_api_key_header, ` +
	`cis_token_url, cis_client_id, cis_client_secret_env, cis_scopes, cis_timeout_ms, cis_rate_per_second, ` +
	`cis_max_concurrent, updated_at`

// billerTableVar declares a table variable shaped like datapump_biller.
const billerTableVar = `id nvarchar(128) NOT NULL, name nvarchar(256) NOT NULL, shard nvarchar(128) NOT NULL,
    mode nvarchar(16) NOT NULL, cutover_at datetime2(3) NULL, cis_base_url nvarchar(2048) NOT NULL,
    cis_auth nvarchar(32) NOT NULL, cis_api_key_env nvarchar(256) NOT NULL, cis_api_key_header nvarchar(256) NOT NULL,
    cis_token_url nvarchar(2048) NOT NULL, cis_client_id nvarchar(256) NOT NULL, cis_client_secret_env nvarchar(256) NOT NULL,
    cis_scopes nvarchar(max) NOT NULL, cis_timeout_ms bigint NOT NULL, cis_rate_per_second float NOT NULL,
    cis_max_concurrent int NOT NULL, updated_at datetime2(3) NOT NULL`

func scanBiller(row scanner) (catalog.Biller, error) {
	var (
		b          catalog.Biller
		mode, auth string
		scopes     string
		cutover    sql.NullTime
		timeoutMS  int64
		updated    time.Time
	)
	err := row.Scan(&b.ID, &b.Name, &b.Shard, &mode, &cutover, &b.CIS.BaseURL, &auth, &b.CIS.APIKeyEnv,
		&b.CIS.APIKeyHeader, &b.CIS.TokenURL, &b.CIS.ClientID, &b.CIS.ClientSecretEnv, &scopes,
		&timeoutMS, &b.CIS.RatePerSecond, &b.CIS.MaxConcurrent, &updated)
	if err != nil {
		return catalog.Biller{}, err
	}
	b.Mode = catalog.Mode(mode)
	b.CIS.Auth = catalog.AuthType(auth)
	b.CutoverAt = utc(cutover)
	b.CIS.Timeout = time.Duration(timeoutMS) * time.Millisecond
	if err := json.Unmarshal([]byte(scopes), &b.CIS.Scopes); err != nil {
		return catalog.Biller{}, fmt.Errorf("biller %s: cis_scopes: %w", b.ID, err)
	}
	if len(b.CIS.Scopes) == 0 {
		b.CIS.Scopes = nil
	}
	b.UpdatedAt = updated.UTC()
	return b, nil
}

// billerListSQL lists every biller in id order; the id column's binary
// collation makes that byte order, as in the other adapters. Locking
// review: a plain read of a small table.
func (s *Store) billerListSQL() string {
	return `SELECT ` + billerColumns + ` FROM ` + s.t.biller + ` ORDER BY id`
}

// BillerList returns every biller, ordered by id (byte order).
func (s *Store) BillerList(ctx context.Context) ([]catalog.Biller, error) {
	rows, err := s.db.QueryContext(ctx, s.billerListSQL())
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

// billerGetSQL reads one biller by id. Locking review: a plain read of one key.
func (s *Store) billerGetSQL(id string) (string, params) {
	var p params
	return `SELECT ` + billerColumns + ` FROM ` + s.t.biller + ` WHERE id = ` + p.add(id), p
}

// BillerGet returns one biller; catalog.ErrBillerNotFound if absent.
func (s *Store) BillerGet(ctx context.Context, id string) (catalog.Biller, error) {
	q, args := s.billerGetSQL(id)
	b, err := scanBiller(s.db.QueryRowContext(ctx, q, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return catalog.Biller{}, fmt.Errorf("get biller %s: %w", id, catalog.ErrBillerNotFound)
	}
	if err != nil {
		return catalog.Biller{}, fmt.Errorf("get biller %s: %w", id, err)
	}
	return b, nil
}

// billerUpsertSQL creates or replaces a biller; it runs in a transaction.
//
// Locking review: an upsert without MERGE. The UPDATE reads the id WITH
// (UPDLOCK, HOLDLOCK), so its key (or, for a new id, the key range) stays
// locked to commit and two upserts of one new biller cannot both insert:
// the second waits, then updates the row the first inserted.
func (s *Store) billerUpsertSQL(b catalog.Biller, scopes string) (string, params) {
	var p params
	id := p.add(b.ID)
	vals := []string{
		p.add(b.Name), p.add(b.Shard), p.add(string(b.Mode)), `CAST(` + p.add(timeArg(b.CutoverAt)) + ` AS datetime2(3))`,
		p.add(b.CIS.BaseURL), p.add(string(b.CIS.Auth)), p.add(b.CIS.APIKeyEnv), p.add(b.CIS.APIKeyHeader),
		p.add(b.CIS.TokenURL), p.add(b.CIS.ClientID), p.add(b.CIS.ClientSecretEnv), p.add(scopes),
		p.add(b.CIS.Timeout.Milliseconds()), p.add(b.CIS.RatePerSecond), p.add(int32(b.CIS.MaxConcurrent)),
	}
	cols := strings.Split(billerColumns, ", ")
	set := make([]string, 0, len(vals)+1)
	for i, v := range vals {
		set = append(set, cols[i+1]+` = `+v)
	}
	set = append(set, `updated_at = SYSUTCDATETIME()`)
	q := `SET NOCOUNT ON;
UPDATE ` + s.t.biller + ` WITH (UPDLOCK, HOLDLOCK)
SET ` + strings.Join(set, `, `) + `
WHERE id = ` + id + `;
IF @@ROWCOUNT = 0
    INSERT INTO ` + s.t.biller + ` (` + billerColumns + `)
    VALUES (` + id + `, ` + strings.Join(vals, `, `) + `, SYSUTCDATETIME());`
	return q, p
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
	j, err := json.Marshal(scopes)
	if err != nil {
		return fmt.Errorf("upsert biller %s: %w", b.ID, err)
	}
	q, args := s.billerUpsertSQL(b, string(j))
	err = s.retryDeadlock(ctx, func() error {
		return s.inTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, q, args...)
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("upsert biller %s: %w", b.ID, err)
	}
	return nil
}

// billerSetModeSQL changes a biller's toggle in one UPDATE: the CASE reads
// the mode before the update, so the cut-over is set only on a move from
// off. Locking review: one clustered-key seek, one row's lock.
func (s *Store) billerSetModeSQL(p catalog.SetModeParams, mode catalog.Mode) (string, params) {
	var a params
	id, m := a.add(p.BillerID), a.add(string(mode))
	q := `SET NOCOUNT ON;
DECLARE @out TABLE (` + billerTableVar + `);
UPDATE ` + s.t.biller + `
SET mode = ` + m + `,
    cutover_at = CASE WHEN mode = N'off' AND ` + m + ` <> N'off'
        THEN COALESCE(CAST(` + a.add(timeArg(p.CutoverAt)) + ` AS datetime2(3)), SYSUTCDATETIME()) ELSE cutover_at END,
    updated_at = SYSUTCDATETIME()
OUTPUT ` + prefixedList("inserted", billerColumns) + `
INTO @out
WHERE id = ` + id + `;
SELECT ` + billerColumns + ` FROM @out;`
	return q, a
}

// prefixedList qualifies every column of a comma-separated list.
func prefixedList(alias, columns string) string {
	cols := strings.Split(columns, ", ")
	for i, c := range cols {
		cols[i] = alias + "." + c
	}
	return strings.Join(cols, ", ")
}

// BillerSetMode changes a biller's toggle. Moving from off to poll or
// direct sets the cut-over to p.CutoverAt, or to the database clock when it
// is zero; any other move keeps the watermark.
func (s *Store) BillerSetMode(ctx context.Context, p catalog.SetModeParams) (catalog.Biller, error) {
	mode, err := catalog.ParseMode(string(p.Mode))
	if err != nil {
		return catalog.Biller{}, fmt.Errorf("set mode of biller %s: %w", p.BillerID, err)
	}
	q, args := s.billerSetModeSQL(p, mode)
	var b catalog.Biller
	err = s.retryDeadlock(ctx, func() error {
		var err error
		b, err = scanBiller(s.db.QueryRowContext(ctx, q, args...))
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return catalog.Biller{}, fmt.Errorf("set mode of biller %s: %w", p.BillerID, catalog.ErrBillerNotFound)
	}
	if err != nil {
		return catalog.Biller{}, fmt.Errorf("set mode of biller %s: %w", p.BillerID, err)
	}
	return b, nil
}
