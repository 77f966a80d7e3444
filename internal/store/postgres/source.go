package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/datapump/datapump/internal/store"
)

// ItemEnrich runs the item type's enrichment query for one item and returns
// its first row's columns by name; store.ErrRelatedMissing if it finds none.
func (s *Store) ItemEnrich(ctx context.Context, key store.ItemKey) (map[string]any, error) {
	src, err := s.source(key.ItemType)
	if err != nil {
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	}
	rows, err := s.pool.Query(ctx, src.enrich, key.ItemID)
	if err != nil {
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	}
	return enrichRow(rows, key)
}

// enrichRow reads the first row of an enrichment query's result by column
// name and closes rows; store.ErrRelatedMissing when there is none.
func enrichRow(rows pgx.Rows, key store.ItemKey) (map[string]any, error) {
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("enrich %s: %w", key, err)
		}
		return nil, fmt.Errorf("enrich %s: %w", key, store.ErrRelatedMissing)
	}
	values, err := rows.Values()
	if err != nil {
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	}
	out := columnsByName(rows.FieldDescriptions(), values)
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	}
	return out, nil
}

// columnsByName maps each column's name to its value made plain (see
// plainValue).
func columnsByName(fields []pgconn.FieldDescription, values []any) map[string]any {
	out := make(map[string]any, len(values))
	for i, fd := range fields {
		out[fd.Name] = plainValue(values[i])
	}
	return out
}

// plainValue turns pgx's richer types into plain Go values a mapping
// function can handle: numerics become float64 (or int64 when whole),
// times are UTC, UUIDs are strings.
func plainValue(v any) any {
	switch x := v.(type) {
	case time.Time:
		return x.UTC()
	case pgtype.Numeric:
		if !x.Valid {
			return nil
		}
		if i, err := x.Int64Value(); err == nil && i.Valid && x.Exp >= 0 {
			return i.Int64
		}
		if f, err := x.Float64Value(); err == nil && f.Valid {
			return f.Float64
		}
		return nil
	case [16]byte:
		return pgtype.UUID{Bytes: x, Valid: true}.String()
	}
	return v
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

func (s *Store) itemSource(ctx context.Context, src source, key store.ItemKey) (store.SourceRow, error) {
	args := []any{key.ItemID}
	filter := ""
	if src.typeColumn != "" {
		args = append(args, src.TypeValue)
		filter = src.typeFilter("s", len(args))
	}
	q := fmt.Sprintf(`SELECT s.%s::text, s.%s::timestamptz FROM %s s WHERE s.%s = $1%s`,
		src.biller, src.createdAt, src.table, src.key, filter)
	row := store.SourceRow{ItemKey: key}
	var created *time.Time
	err := s.pool.QueryRow(ctx, q, args...).Scan(&row.BillerID, &created)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.SourceRow{}, fmt.Errorf("source row %s: %w", key, store.ErrNotFound)
	}
	if err != nil {
		return store.SourceRow{}, fmt.Errorf("read source row %s: %w", key, err)
	}
	row.CreatedAt = utc(created)
	return row, nil
}

// ItemEnrichBatch reads every item's enrichment in one statement per item
// type (the enrichment query joined laterally over the batch's ids, see
// bindEnrichSet). If that statement fails, as it does when one item's
// data breaks the query, the batch is read again as pipelined per-item
// queries, and if one of those fails (aborting the ones after it in the
// batch's implicit transaction), item by item, so the failure stays with
// the item that caused it.
func (s *Store) ItemEnrichBatch(ctx context.Context, keys []store.ItemKey) ([]store.EnrichResult, error) {
	for _, read := range []func(context.Context, []store.ItemKey) ([]store.EnrichResult, error){s.enrichSet, s.enrichPipelined} {
		out, err := read(ctx, keys)
		if err == nil {
			return out, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("enrich items: %w", err)
		}
	}
	out := make([]store.EnrichResult, len(keys))
	for i, k := range keys {
		out[i].Row, out[i].Err = s.ItemEnrich(ctx, k)
	}
	return out, nil
}

// enrichSet reads the batch with one set-based statement per item type.
// Keys without a row get store.ErrRelatedMissing; any statement error
// fails the whole batch.
func (s *Store) enrichSet(ctx context.Context, keys []store.ItemKey) ([]store.EnrichResult, error) {
	out, known := s.enrichable(keys)
	byType := map[string][]int{}
	var types []string
	for _, i := range known {
		itemType := keys[i].ItemType
		if _, seen := byType[itemType]; !seen {
			types = append(types, itemType)
		}
		byType[itemType] = append(byType[itemType], i)
	}
	for _, itemType := range types {
		positions := byType[itemType]
		ids := make([]int64, len(positions))
		for j, i := range positions {
			ids[j] = keys[i].ItemID
		}
		found, err := s.enrichSetOf(ctx, s.sources[itemType], ids)
		if err != nil {
			return nil, fmt.Errorf("enrich %d %s items: %w", len(ids), itemType, err)
		}
		for j, i := range positions {
			if found[j] == nil {
				out[i].Err = fmt.Errorf("enrich %s: %w", keys[i], store.ErrRelatedMissing)
				continue
			}
			out[i].Row = found[j]
		}
	}
	return out, nil
}

// enrichable returns a result per key, with the error set for each key of
// an unknown item type, and the positions of the others.
func (s *Store) enrichable(keys []store.ItemKey) ([]store.EnrichResult, []int) {
	out := make([]store.EnrichResult, len(keys))
	known := make([]int, 0, len(keys))
	for i, key := range keys {
		if _, err := s.source(key.ItemType); err != nil {
			out[i].Err = fmt.Errorf("enrich %s: %w", key, err)
			continue
		}
		known = append(known, i)
	}
	return out, known
}

// enrichSetOf runs src's set-based enrichment over ids and returns each
// id's row by position (nil where the query found none).
func (s *Store) enrichSetOf(ctx context.Context, src source, ids []int64) ([]map[string]any, error) {
	rows, err := s.pool.Query(ctx, src.enrichSet, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	found := make([]map[string]any, len(ids))
	fields := rows.FieldDescriptions()
	for rows.Next() {
		values, err := rows.Values()
		if err != nil {
			return nil, err
		}
		ord, ok := values[0].(int64)
		if !ok || ord < 1 || int(ord) > len(ids) {
			return nil, fmt.Errorf("enrichment row for position %v of %d", values[0], len(ids))
		}
		found[ord-1] = columnsByName(fields[1:], values[1:])
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return found, nil
}

// enrichPipelined sends the enrichment queries as one batch; any query
// error fails it.
func (s *Store) enrichPipelined(ctx context.Context, keys []store.ItemKey) ([]store.EnrichResult, error) {
	out, queued := s.enrichable(keys)
	batch := &pgx.Batch{}
	for _, i := range queued {
		batch.Queue(s.sources[keys[i].ItemType].enrich, keys[i].ItemID)
	}
	if len(queued) == 0 {
		return out, nil
	}
	results := s.pool.SendBatch(ctx, batch)
	defer results.Close()
	for _, i := range queued {
		rows, err := results.Query()
		if err != nil {
			return nil, fmt.Errorf("enrich %s: %w", keys[i], err)
		}
		out[i].Row, out[i].Err = enrichRow(rows, keys[i])
		if out[i].Err != nil && !errors.Is(out[i].Err, store.ErrRelatedMissing) {
			return nil, out[i].Err
		}
	}
	if err := results.Close(); err != nil {
		return nil, fmt.Errorf("enrich items: %w", err)
	}
	return out, nil
}
