package sqlserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
)

// demoSchemaSQL creates the demo source tables if they are missing: the
// applications' side of the demo, what the built-in item types read. Ids are
// IDENTITY columns, so concurrent inserts take ids without waiting for each
// other and a transaction can hold a lower id while a higher one commits.
// An account's number and name are derived from its id. No foreign keys, so
// the tests can leave a related account missing. Each statement runs on its
// own (CREATE INDEX must see the table CREATE TABLE made).
func (s *Store) demoSchemaSQL() []string {
	ifMissing := func(table string) string { return `IF OBJECT_ID(N'` + table + `', N'U') IS NULL` }
	ifNoIndex := func(table, index string) string {
		return `IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE object_id = OBJECT_ID(N'` + table + `') AND name = N'` + index + `')`
	}
	return []string{
		ifMissing(s.t.accounts) + `
CREATE TABLE ` + s.t.accounts + ` (
    id             bigint        IDENTITY(1, 1) NOT NULL CONSTRAINT [PK_accounts] PRIMARY KEY,
    biller_id      nvarchar(128) NOT NULL,
    account_number AS (CONCAT(N'ACC-', RIGHT(CONCAT(N'00000000', id), IIF(LEN(id) > 8, LEN(id), 8)))),
    customer_name  AS (CONCAT(N'Customer ', id)),
    email          nvarchar(256) NOT NULL
)`,
		ifMissing(s.t.payments) + `
CREATE TABLE ` + s.t.payments + ` (
    id           bigint        IDENTITY(1, 1) NOT NULL CONSTRAINT [PK_payments] PRIMARY KEY,
    biller_id    nvarchar(128) NOT NULL,
    account_id   bigint        NOT NULL,
    amount_cents bigint        NOT NULL,
    currency     nvarchar(3)   NOT NULL CONSTRAINT [DF_payments_currency] DEFAULT (N'USD'),
    created_at   datetime2(3)  NOT NULL CONSTRAINT [DF_payments_created_at] DEFAULT (SYSUTCDATETIME())
)`,
		ifNoIndex(s.t.payments, "IX_payments_biller_created") + `
CREATE INDEX [IX_payments_biller_created] ON ` + s.t.payments + ` (biller_id, created_at)`,
		ifMissing(s.t.paperless) + `
CREATE TABLE ` + s.t.paperless + ` (
    id         bigint        IDENTITY(1, 1) NOT NULL CONSTRAINT [PK_paperless_registrations] PRIMARY KEY,
    biller_id  nvarchar(128) NOT NULL,
    account_id bigint        NOT NULL,
    email      nvarchar(256) NOT NULL,
    enrolled   bit           NOT NULL CONSTRAINT [DF_paperless_registrations_enrolled] DEFAULT (1),
    created_at datetime2(3)  NOT NULL CONSTRAINT [DF_paperless_registrations_created_at] DEFAULT (SYSUTCDATETIME())
)`,
		ifNoIndex(s.t.paperless, "IX_paperless_registrations_biller_created") + `
CREATE INDEX [IX_paperless_registrations_biller_created] ON ` + s.t.paperless + ` (biller_id, created_at)`,
	}
}

// appLockTxSQL takes an exclusive application lock owned by the
// transaction and returns sp_getapplock's result (negative: not granted).
func appLockTxSQL(resource string) (string, params) {
	var p params
	return `DECLARE @lock int;
EXEC @lock = sp_getapplock @Resource = ` + p.add(resource) + `, @LockMode = 'Exclusive', @LockOwner = 'Transaction', @LockTimeout = ` + p.add(migrateLockTimeoutMS) + `;
SELECT @lock;`, p
}

// DemoSchemaCreate creates the demo source tables (accounts, payments,
// paperless_registrations) in the configured schema if they are missing,
// under an application lock so concurrent callers do not collide.
func (s *Store) DemoSchemaCreate(ctx context.Context) error {
	lockSQL, lockArgs := appLockTxSQL("datapump:demo-schema:" + s.schema)
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var lock int
		if err := tx.QueryRowContext(ctx, lockSQL, lockArgs...).Scan(&lock); err != nil {
			return err
		}
		if lock < 0 {
			return fmt.Errorf("sp_getapplock returned %d", lock)
		}
		for _, stmt := range s.demoSchemaSQL() {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create demo schema: %w", err)
	}
	return nil
}

// DemoItemsInsert inserts the items (and the accounts they need) in one
// transaction and returns their keys in order.
func (s *Store) DemoItemsInsert(ctx context.Context, demo []store.DemoItem) ([]store.ItemKey, error) {
	var keys []store.ItemKey
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		keys, err = s.demoItemsInsertTx(ctx, tx, demo)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("insert demo items: %w", err)
	}
	return keys, nil
}

// demoRow is one demo row as OPENJSON reads it.
type demoRow struct {
	ID      int64  `json:"id,omitempty"`
	Ord     int    `json:"o"`
	Biller  string `json:"b"`
	Account int64  `json:"a,omitempty"`
	Amount  int64  `json:"m,omitempty"`
	Email   string `json:"e,omitempty"`
	Created string `json:"c,omitempty"`
}

// demoTable says how one demo table is filled from demoRow JSON: the
// columns after the id, the OPENJSON schema of those columns and the
// expressions that produce them from j.
type demoTable struct {
	table, columns, schema, values string
}

// demoAccounts is how the accounts table is filled.
func (s *Store) demoAccounts() demoTable {
	return demoTable{
		table:   s.t.accounts,
		columns: `biller_id, email`,
		schema:  `biller_id nvarchar(128) '$.b', email nvarchar(256) '$.e'`,
		values:  `j.biller_id, j.email`,
	}
}

// demoItemTables is how each item type's table is filled.
func (s *Store) demoItemTables() map[string]demoTable {
	return map[string]demoTable{
		items.Payment: {
			table:   s.t.payments,
			columns: `biller_id, account_id, amount_cents, currency, created_at`,
			schema:  `biller_id nvarchar(128) '$.b', account_id bigint '$.a', amount_cents bigint '$.m', created_at datetime2(7) '$.c'`,
			values:  `j.biller_id, j.account_id, j.amount_cents, N'USD', COALESCE(j.created_at, SYSUTCDATETIME())`,
		},
		items.Paperless: {
			table:   s.t.paperless,
			columns: `biller_id, account_id, email, enrolled, created_at`,
			schema:  `biller_id nvarchar(128) '$.b', account_id bigint '$.a', email nvarchar(256) '$.e', created_at datetime2(7) '$.c'`,
			values:  `j.biller_id, j.account_id, j.email, 1, COALESCE(j.created_at, SYSUTCDATETIME())`,
		},
	}
}

// demoInsertSQL inserts rows with explicit ids (SET IDENTITY_INSERT, only
// around that insert; accounts only where missing) and rows that take
// generated ids, and returns the generated ids ascending. INSERT … SELECT …
// ORDER BY assigns identity values in ORDER BY order, so the i-th smallest
// id belongs to the row with ord i.
//
// Locking review: generated ids come from IDENTITY, which is not
// transactional: two open inserts take ids without waiting for each other
// (the lower id may commit last, which the suite relies on). An explicit
// account is inserted only if missing, checked WITH (UPDLOCK, HOLDLOCK,
// FORCESEEK) as in claimInsertSQL, so two inserts naming one new account
// do not both create it. Nothing reads other rows, so an insert never waits
// on another transaction's uncommitted rows.
func demoInsertSQL(t demoTable, explicit, generated string, onlyMissing bool) (string, params) {
	var p params
	q := `SET NOCOUNT ON;
DECLARE @gen TABLE (id bigint NOT NULL PRIMARY KEY);
`
	if explicit != "" {
		missing := ""
		if onlyMissing {
			missing = `
WHERE NOT EXISTS (SELECT 1 FROM ` + t.table + ` AS x WITH (UPDLOCK, HOLDLOCK, FORCESEEK) WHERE x.id = j.id)`
		}
		q += `SET IDENTITY_INSERT ` + t.table + ` ON;
INSERT INTO ` + t.table + ` (id, ` + t.columns + `)
SELECT j.id, ` + t.values + `
FROM OPENJSON(` + p.add(explicit) + `) WITH (id bigint '$.id', ` + t.schema + `) AS j` + missing + `;
SET IDENTITY_INSERT ` + t.table + ` OFF;
`
	}
	if generated != "" {
		q += `INSERT INTO ` + t.table + ` (` + t.columns + `)
OUTPUT inserted.id INTO @gen (id)
SELECT ` + t.values + `
FROM OPENJSON(` + p.add(generated) + `) WITH (ord int '$.o', ` + t.schema + `) AS j
ORDER BY j.ord;
`
	}
	return q + `SELECT id FROM @gen ORDER BY id;`, p
}

// demoInsert runs demoInsertSQL for rows (ID 0: generated) and returns the
// generated ids in the order of those rows.
func demoInsert(ctx context.Context, tx *sql.Tx, t demoTable, rows []demoRow, onlyMissing bool) ([]int64, error) {
	var explicit, generated []demoRow
	for _, r := range rows {
		if r.ID != 0 {
			explicit = append(explicit, r)
			continue
		}
		r.Ord = len(generated)
		generated = append(generated, r)
	}
	encode := func(rs []demoRow) (string, error) {
		if len(rs) == 0 {
			return "", nil
		}
		b, err := json.Marshal(rs)
		return string(b), err
	}
	ej, err := encode(explicit)
	if err != nil {
		return nil, err
	}
	gj, err := encode(generated)
	if err != nil {
		return nil, err
	}
	if ej == "" && gj == "" {
		return nil, nil
	}
	q, args := demoInsertSQL(t, ej, gj, onlyMissing)
	res, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var ids []int64
	for res.Next() {
		var id int64
		if err := res.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := res.Err(); err != nil {
		return nil, err
	}
	if len(ids) != len(generated) {
		return nil, fmt.Errorf("%d ids generated for %d rows", len(ids), len(generated))
	}
	return ids, nil
}

// demoItemsInsertTx is DemoItemsInsert inside the caller's transaction, so
// a test can hold the insert open (rows committed out of id order). An item
// with AccountID zero gets a new account; a non-zero AccountID is created if
// missing and shared; SkipAccount points the item at an account that does
// not exist.
func (s *Store) demoItemsInsertTx(ctx context.Context, tx *sql.Tx, demo []store.DemoItem) ([]store.ItemKey, error) {
	if len(demo) == 0 {
		return nil, nil
	}
	tables := s.demoItemTables()
	keys := make([]store.ItemKey, len(demo))
	accountIDs := make([]int64, len(demo))
	var (
		accounts    []demoRow
		accountOf   = map[int]int{} // item → index into the generated accounts
		explicitAcc = map[int64]bool{}
	)
	for i, it := range demo {
		if _, ok := tables[it.ItemType]; !ok {
			return nil, fmt.Errorf("item %d: %w: %q (the demo schema has payment and paperless)", i, store.ErrUnknownItemType, it.ItemType)
		}
		if it.BillerID == "" {
			return nil, fmt.Errorf("item %d: biller_id: required", i)
		}
		if it.ItemID < 0 {
			return nil, fmt.Errorf("item %d: item_id: %d must not be negative", i, it.ItemID)
		}
		keys[i] = store.ItemKey{ItemType: it.ItemType, ItemID: it.ItemID}
		email := it.Email
		if email == "" {
			email = "customer@example.com"
		}
		switch {
		case it.SkipAccount:
			// Never inserted: the related row is missing. Ids never go negative.
			accountIDs[i] = it.AccountID
			if accountIDs[i] == 0 {
				accountIDs[i] = -1 - int64(i)
			}
		case it.AccountID != 0:
			accountIDs[i] = it.AccountID
			if !explicitAcc[it.AccountID] {
				explicitAcc[it.AccountID] = true
				accounts = append(accounts, demoRow{ID: it.AccountID, Biller: it.BillerID, Email: email})
			}
		default:
			accountOf[i] = len(accounts)
			accounts = append(accounts, demoRow{Biller: it.BillerID, Email: email})
		}
	}
	generated, err := demoInsert(ctx, tx, s.demoAccounts(), accounts, true)
	if err != nil {
		return nil, fmt.Errorf("accounts: %w", err)
	}
	// generated is in the order of the accounts that had no id.
	var n int
	accountIndex := make([]int64, len(accounts))
	for j, a := range accounts {
		if a.ID == 0 {
			accountIndex[j] = generated[n]
			n++
		}
	}
	for i, j := range accountOf {
		accountIDs[i] = accountIndex[j]
	}

	for _, itemType := range []string{items.Payment, items.Paperless} {
		var (
			rows []demoRow
			idx  []int // item index of each row
		)
		for i, it := range demo {
			if it.ItemType != itemType {
				continue
			}
			r := demoRow{ID: it.ItemID, Biller: it.BillerID, Account: accountIDs[i], Amount: it.AmountCents, Email: it.Email}
			if itemType == items.Paperless && r.Email == "" {
				r.Email = fmt.Sprintf("customer%d@example.com", accountIDs[i])
			}
			if !it.CreatedAt.IsZero() {
				r.Created = it.CreatedAt.UTC().Format(jsonTimeLayout)
			}
			rows = append(rows, r)
			idx = append(idx, i)
		}
		ids, err := demoInsert(ctx, tx, tables[itemType], rows, false)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", itemType, err)
		}
		var g int
		for k, r := range rows {
			if r.ID == 0 {
				keys[idx[k]].ItemID = ids[g]
				g++
			}
		}
	}
	if slices.ContainsFunc(keys, func(k store.ItemKey) bool { return k.ItemID == 0 }) {
		return nil, errors.New("an item got no id")
	}
	return keys, nil
}
