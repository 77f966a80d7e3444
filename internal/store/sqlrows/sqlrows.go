// Package sqlrows reads result sets the way every database/sql store
// adapter needs them (SQLite, SQL Server): one row as a map by column name,
// and control-record counts per biller and status.
package sqlrows

import (
	"database/sql"
	"fmt"

	"github.com/datapump/datapump/internal/store"
)

// FirstRow reads the first row of rows' current result set by column name,
// converting each value with convert (nil keeps the driver's value). found
// is false when the result set is empty. It leaves rows open, so that a
// caller reading several result sets can go on past the rest of this one
// to the next; FirstRowMap is for a caller that wants only this row.
func FirstRow(rows *sql.Rows, convert func(col *sql.ColumnType, v any) any) (row map[string]any, found bool, err error) {
	types, err := rows.ColumnTypes()
	if err != nil {
		return nil, false, err
	}
	if !rows.Next() {
		return nil, false, rows.Err()
	}
	vals := make([]any, len(types))
	ptrs := make([]any, len(types))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, false, err
	}
	row = make(map[string]any, len(types))
	for i, t := range types {
		if convert != nil {
			vals[i] = convert(t, vals[i])
		}
		row[t.Name()] = vals[i]
	}
	return row, true, nil
}

// FirstRowMap reads the first row of rows as FirstRow does and closes rows.
func FirstRowMap(rows *sql.Rows, convert func(col *sql.ColumnType, v any) any) (row map[string]any, found bool, err error) {
	defer rows.Close()
	return FirstRow(rows, convert)
}

// StatusCounts reads (biller_id, status, count) rows and closes rows.
func StatusCounts(rows *sql.Rows) ([]store.StatusCount, error) {
	defer rows.Close()
	var out []store.StatusCount
	for rows.Next() {
		var c store.StatusCount
		var status string
		if err := rows.Scan(&c.BillerID, &status, &c.Count); err != nil {
			return nil, fmt.Errorf("count control records: %w", err)
		}
		c.Status = store.Status(status)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count control records: %w", err)
	}
	return out, nil
}
