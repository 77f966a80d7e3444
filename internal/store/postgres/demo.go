package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/datapump/datapump/internal/store"
)

// demoSchema is the applications' side of the demo: the tables the built-in
// item types (internal/items) read. No foreign keys, so the tests can leave
// a related account missing.
const demoSchema = `
CREATE TABLE IF NOT EXISTS accounts (
    id             bigserial PRIMARY KEY,
    biller_id      text NOT NULL,
    account_number text NOT NULL,
    customer_name  text NOT NULL,
    email          text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS payments (
    id           bigserial PRIMARY KEY,
    biller_id    text        NOT NULL,
    account_id   bigint      NOT NULL,
    amount_cents bigint      NOT NULL,
    currency     text        NOT NULL DEFAULT 'USD',
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS paperless_registrations (
    id         bigserial PRIMARY KEY,
    biller_id  text        NOT NULL,
    account_id bigint      NOT NULL,
    email      text        NOT NULL,
    enrolled   boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS accounts_biller_id_idx ON accounts (biller_id, id);
CREATE INDEX IF NOT EXISTS payments_biller_id_idx ON payments (biller_id, id);
CREATE INDEX IF NOT EXISTS payments_biller_created_idx ON payments (biller_id, created_at);
CREATE INDEX IF NOT EXISTS paperless_registrations_biller_id_idx ON paperless_registrations (biller_id, id);
CREATE INDEX IF NOT EXISTS paperless_registrations_biller_created_idx ON paperless_registrations (biller_id, created_at);
`

// DemoSchemaCreate creates the demo source tables (accounts, payments,
// paperless_registrations) if they are missing.
func (s *Store) DemoSchemaCreate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, s.lockKey("demo-schema")); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, demoSchema)
		return err
	})
	if err != nil {
		return fmt.Errorf("create demo schema: %w", err)
	}
	return nil
}

// DemoItemsInsert inserts the items (and the accounts they need) in one
// transaction and returns their keys in order.
func (s *Store) DemoItemsInsert(ctx context.Context, items []store.DemoItem) ([]store.ItemKey, error) {
	var keys []store.ItemKey
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		keys, err = demoItemsInsertTx(ctx, tx, items)
		return err
	})
	if err != nil {
		return nil, err
	}
	return keys, nil
}

// demoTable is one item type's demo table and sequence.
type demoTable struct{ table, sequence string }

var demoTables = map[string]demoTable{
	"payment":   {"payments", "payments_id_seq"},
	"paperless": {"paperless_registrations", "paperless_registrations_id_seq"},
}

// demoItemsInsertTx is DemoItemsInsert inside the caller's transaction, so
// a test can hold the insert open (rows committed out of id order). Ids are
// taken from the tables' sequences up front; explicit ids move the
// sequences past them so later generated ids do not collide.
func demoItemsInsertTx(ctx context.Context, tx pgx.Tx, items []store.DemoItem) ([]store.ItemKey, error) {
	if len(items) == 0 {
		return nil, nil
	}
	keys := make([]store.ItemKey, len(items))
	need := map[string]int{} // sequence → ids to draw
	var accountsNeeded int
	for i, it := range items {
		dt, ok := demoTables[it.ItemType]
		if !ok {
			return nil, fmt.Errorf("insert demo items: item %d: %w: %q", i, store.ErrUnknownItemType, it.ItemType)
		}
		if it.BillerID == "" {
			return nil, fmt.Errorf("insert demo items: item %d: biller_id: required", i)
		}
		if it.ItemID < 0 {
			return nil, fmt.Errorf("insert demo items: item %d: item_id: %d must not be negative", i, it.ItemID)
		}
		if it.ItemID == 0 {
			need[dt.sequence]++
		}
		if it.AccountID == 0 {
			accountsNeeded++
		}
		keys[i] = store.ItemKey{ItemType: it.ItemType, ItemID: it.ItemID}
	}

	drawn := map[string][]int64{}
	for seq, n := range need {
		ids, err := drawIDs(ctx, tx, seq, n)
		if err != nil {
			return nil, err
		}
		drawn[seq] = ids
	}
	accountIDs, err := drawIDs(ctx, tx, "accounts_id_seq", accountsNeeded)
	if err != nil {
		return nil, err
	}

	var (
		acc = struct {
			ids                             []int64
			billers, numbers, names, emails []string
		}{}
		pay = struct {
			ids, accounts, amounts []int64
			billers                []string
			created                []pgtype.Timestamptz
		}{}
		reg = struct {
			ids, accounts   []int64
			billers, emails []string
			created         []pgtype.Timestamptz
		}{}
		maxExplicit = map[string]int64{}
		maxAccount  int64
		accountSeen = map[int64]bool{}
	)
	for i, it := range items {
		dt := demoTables[it.ItemType]
		if it.ItemID == 0 {
			keys[i].ItemID, drawn[dt.sequence] = drawn[dt.sequence][0], drawn[dt.sequence][1:]
		} else if it.ItemID > maxExplicit[dt.sequence] {
			maxExplicit[dt.sequence] = it.ItemID
		}
		accountID := it.AccountID
		if accountID == 0 {
			accountID, accountIDs = accountIDs[0], accountIDs[1:]
		} else if accountID > maxAccount {
			maxAccount = accountID
		}
		// With SkipAccount the account id is never inserted: the related row
		// is missing. A named account is created unless it exists, and shared.
		if !it.SkipAccount && !accountSeen[accountID] {
			accountSeen[accountID] = true
			email := it.Email
			if email == "" {
				email = fmt.Sprintf("customer%d@example.com", accountID)
			}
			acc.ids = append(acc.ids, accountID)
			acc.billers = append(acc.billers, it.BillerID)
			acc.numbers = append(acc.numbers, fmt.Sprintf("ACC-%08d", accountID))
			acc.names = append(acc.names, fmt.Sprintf("Customer %d", accountID))
			acc.emails = append(acc.emails, email)
		}
		created := pgtype.Timestamptz{Time: it.CreatedAt, Valid: !it.CreatedAt.IsZero()}
		switch it.ItemType {
		case "payment":
			pay.ids = append(pay.ids, keys[i].ItemID)
			pay.billers = append(pay.billers, it.BillerID)
			pay.accounts = append(pay.accounts, accountID)
			pay.amounts = append(pay.amounts, it.AmountCents)
			pay.created = append(pay.created, created)
		case "paperless":
			email := it.Email
			if email == "" {
				email = fmt.Sprintf("customer%d@example.com", accountID)
			}
			reg.ids = append(reg.ids, keys[i].ItemID)
			reg.billers = append(reg.billers, it.BillerID)
			reg.accounts = append(reg.accounts, accountID)
			reg.emails = append(reg.emails, email)
			reg.created = append(reg.created, created)
		}
	}

	batch := &pgx.Batch{}
	if len(acc.ids) > 0 {
		batch.Queue(`INSERT INTO accounts (id, biller_id, account_number, customer_name, email)
			SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
			ON CONFLICT (id) DO NOTHING`,
			acc.ids, acc.billers, acc.numbers, acc.names, acc.emails)
	}
	if len(pay.ids) > 0 {
		batch.Queue(`INSERT INTO payments (id, biller_id, account_id, amount_cents, currency, created_at)
			SELECT id, biller_id, account_id, amount_cents, 'USD', coalesce(created_at, clock_timestamp())
			FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::timestamptz[])
				AS r(id, biller_id, account_id, amount_cents, created_at)`,
			pay.ids, pay.billers, pay.accounts, pay.amounts, pay.created)
	}
	if len(reg.ids) > 0 {
		batch.Queue(`INSERT INTO paperless_registrations (id, biller_id, account_id, email, enrolled, created_at)
			SELECT id, biller_id, account_id, email, true, coalesce(created_at, clock_timestamp())
			FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::timestamptz[])
				AS r(id, biller_id, account_id, email, created_at)`,
			reg.ids, reg.billers, reg.accounts, reg.emails, reg.created)
	}
	if maxAccount > 0 {
		maxExplicit["accounts_id_seq"] = maxAccount
	}
	for seq, top := range maxExplicit {
		// Only ever forward: a sequence that is already past the id stays.
		batch.Queue(`SELECT setval($1::regclass, $2) FROM `+pgx.Identifier{seq}.Sanitize()+`
			WHERE NOT is_called OR last_value < $2`, seq, top)
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("insert demo items: %w", err)
	}
	return keys, nil
}

// drawIDs takes n values from a sequence.
func drawIDs(ctx context.Context, tx pgx.Tx, sequence string, n int) ([]int64, error) {
	if n == 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, `SELECT nextval($1::regclass) FROM generate_series(1, $2)`, sequence, n)
	if err != nil {
		return nil, fmt.Errorf("insert demo items: draw ids: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("insert demo items: draw ids: %w", err)
	}
	return ids, nil
}
