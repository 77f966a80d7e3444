package sqlserver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/store"
)

// TestEnrichBatchResultSets: ItemEnrichBatch's reading of enrichBatchSQL's
// result sets, without a server. Each item's answer is the first row of the
// first result set after its marker; an item whose query returned no
// result set, or during whose query the batch failed, is left unanswered
// for ItemEnrich, and so is every item after a failure.
func TestEnrichBatchResultSets(t *testing.T) {
	t.Parallel()
	marker := func(ord int64) fakeResult {
		return fakeResult{cols: []string{enrichMarker}, rows: [][]driver.Value{{ord}}}
	}
	db := sql.OpenDB(fakeConnector{results: []fakeResult{
		marker(0), {cols: []string{"item_id", "note"}, rows: [][]driver.Value{{int64(10), "a"}, {int64(11), "b"}}},
		marker(1), {cols: []string{"item_id"}},
		marker(2), {cols: []string{"item_id"}, rows: [][]driver.Value{{int64(12)}}}, {cols: []string{"other"}, rows: [][]driver.Value{{"x"}}},
		marker(3),
		marker(4), {cols: []string{"item_id"}, rows: [][]driver.Value{{int64(14)}}},
		marker(5), {err: errors.New("conversion failed")},
		marker(6), {cols: []string{"item_id"}, rows: [][]driver.Value{{int64(16)}}},
	}})
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	rows, err := db.QueryContext(context.Background(), "batch")
	require.NoError(t, err)

	keys := make([]store.ItemKey, 7)
	for i := range keys {
		keys[i] = store.ItemKey{ItemType: "payment", ItemID: int64(10 + i)}
	}
	out := make([]store.EnrichResult, len(keys))
	answered := make([]bool, len(keys))
	readEnrichBatch(rows, keys, out, answered)

	require.Equal(t, []bool{true, true, true, false, true, false, false}, answered)
	require.Equal(t, map[string]any{"item_id": int64(10), "note": "a"}, out[0].Row, "the first row")
	require.ErrorIs(t, out[1].Err, store.ErrRelatedMissing, "an empty result set")
	require.Equal(t, map[string]any{"item_id": int64(12)}, out[2].Row, "the first result set of the item's query")
	require.Equal(t, map[string]any{"item_id": int64(14)}, out[4].Row)
}

// fakeResult is a result set, or (err set) a server error met where it stands.
type fakeResult struct {
	cols []string
	rows [][]driver.Value
	err  error
}

// fakeConnector hands out connections whose every query returns results.
type fakeConnector struct{ results []fakeResult }

func (c fakeConnector) Connect(context.Context) (driver.Conn, error) { return fakeConn(c), nil }
func (c fakeConnector) Driver() driver.Driver                        { return nil }

type fakeConn fakeConnector

func (c fakeConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("not supported") }
func (c fakeConn) Close() error                        { return nil }
func (c fakeConn) Begin() (driver.Tx, error)           { return nil, errors.New("not supported") }
func (c fakeConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return &fakeRows{results: c.results}, nil
}

// fakeRows announces the next result set only once the current one is read
// to its end, and reports an error from Next, as go-mssqldb does.
type fakeRows struct {
	results []fakeResult
	set     int
	row     int
	pending bool
}

func (r *fakeRows) Columns() []string { return r.results[r.set].cols }
func (r *fakeRows) Close() error      { return nil }

func (r *fakeRows) Next(dest []driver.Value) error {
	cur := r.results[r.set]
	if r.row < len(cur.rows) {
		copy(dest, cur.rows[r.row])
		r.row++
		return nil
	}
	if r.set+1 < len(r.results) {
		if err := r.results[r.set+1].err; err != nil {
			return err
		}
		r.pending = true
	}
	return io.EOF
}

func (r *fakeRows) HasNextResultSet() bool { return r.pending }

func (r *fakeRows) NextResultSet() error {
	if !r.pending {
		return io.EOF
	}
	r.set, r.row, r.pending = r.set+1, 0, false
	return nil
}
