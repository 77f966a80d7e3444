package sqlserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	mssql "github.com/microsoft/go-mssqldb"

	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/sqlrows"
)

// ItemEnrich runs the item type's enrichment query for one item, with :id
// bound to @p1, and returns its first row's columns by name;
// store.ErrRelatedMissing if it finds none. The query runs as written, with
// the session's default locking: it reads one committed row.
func (s *Store) ItemEnrich(ctx context.Context, key store.ItemKey) (map[string]any, error) {
	src, err := s.source(key.ItemType)
	if err != nil {
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	}
	rows, err := s.db.QueryContext(ctx, src.enrich, key.ItemID)
	if err != nil {
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	}
	row, found, err := sqlrows.FirstRowMap(rows, plainColumnValue)
	if err != nil {
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	}
	return enriched(key, row, found)
}

// plainColumnValue converts a value of a result set's column as
// plainValue does, for sqlrows.FirstRowMap (ItemEnrich) and
// sqlrows.FirstRow (ItemEnrichBatch, which goes on to the next result set).
func plainColumnValue(col *sql.ColumnType, v any) any { return plainValue(col.DatabaseTypeName(), v) }

// enriched is an enrichment's result for key: its row, or
// store.ErrRelatedMissing when the query found none.
func enriched(key store.ItemKey, row map[string]any, found bool) (map[string]any, error) {
	if !found {
		return nil, fmt.Errorf("enrich %s: %w", key, store.ErrRelatedMissing)
	}
	return row, nil
}

// plainValue turns the driver's values into plain Go values a mapping
// function can handle: decimal and money (which the driver returns as
// digits) become int64 when whole and float64 otherwise, uniqueidentifiers
// become their string form, times are UTC. Integers, bits, floats and
// strings pass as they are.
func plainValue(dbType string, v any) any {
	switch x := v.(type) {
	case time.Time:
		return x.UTC()
	case []byte:
		switch dbType {
		case "DECIMAL", "MONEY", "SMALLMONEY":
			return numeric(string(x))
		case "UNIQUEIDENTIFIER":
			var u mssql.UniqueIdentifier
			if err := u.Scan(x); err == nil {
				return u.String()
			}
		}
	}
	return v
}

// numeric parses a decimal's digits: int64 when whole, float64 otherwise,
// the text itself if neither fits.
func numeric(s string) any {
	whole := s
	if i := strings.IndexByte(s, '.'); i >= 0 && strings.Trim(s[i+1:], "0") == "" {
		whole = s[:i]
	}
	if n, err := strconv.ParseInt(whole, 10, 64); err == nil {
		return n
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return f
	}
	return s
}

// itemSourceSQL reads a source row's biller and created-at by key. A plain
// read: an item consumer asking about a row still being inserted waits for
// its commit rather than reporting it missing.
func (s *Store) itemSourceSQL(src *source, key store.ItemKey) (string, params) {
	var p params
	q := `SELECT CAST(s.` + src.biller + ` AS nvarchar(128)), CAST(s.` + src.createdAt + ` AS datetime2(7)) FROM ` + src.table +
		` AS s WHERE s.` + src.key + ` = ` + p.add(key.ItemID)
	return q + src.typeFilter(&p, "s"), p
}

// ItemSource reads the biller and created-at of one source row;
// store.ErrNotFound if the row does not exist.
func (s *Store) ItemSource(ctx context.Context, key store.ItemKey) (store.SourceRow, error) {
	src, err := s.source(key.ItemType)
	if err != nil {
		return store.SourceRow{}, fmt.Errorf("read source row %s: %w", key, err)
	}
	return s.itemSource(ctx, src, key)
}

func (s *Store) itemSource(ctx context.Context, src *source, key store.ItemKey) (store.SourceRow, error) {
	q, args := s.itemSourceSQL(src, key)
	row := store.SourceRow{ItemKey: key}
	var (
		biller  sql.NullString
		created sql.NullTime
	)
	err := s.db.QueryRowContext(ctx, q, args...).Scan(&biller, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return store.SourceRow{}, fmt.Errorf("source row %s: %w", key, store.ErrNotFound)
	}
	if err != nil {
		return store.SourceRow{}, fmt.Errorf("read source row %s: %w", key, err)
	}
	row.BillerID = biller.String
	row.CreatedAt = utc(created)
	return row, nil
}
