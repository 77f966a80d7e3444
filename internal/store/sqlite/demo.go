package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
)

// demoSchemaSQL creates the demo source tables: what the applications own
// in a real shard. created_at holds SQLite's UTC datetime text.
const demoSchemaSQL = `
CREATE TABLE IF NOT EXISTS accounts (
    id             INTEGER PRIMARY KEY,
    biller_id      TEXT    NOT NULL,
    account_number TEXT    NOT NULL,
    customer_name  TEXT    NOT NULL,
    email          TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS payments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    biller_id    TEXT    NOT NULL,
    account_id   INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    currency     TEXT    NOT NULL DEFAULT 'USD',
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE INDEX IF NOT EXISTS payments_biller_id ON payments (biller_id, id);
CREATE INDEX IF NOT EXISTS payments_biller_created ON payments (biller_id, created_at);
CREATE TABLE IF NOT EXISTS paperless_registrations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    biller_id  TEXT    NOT NULL,
    account_id INTEGER NOT NULL,
    email      TEXT    NOT NULL,
    enrolled   INTEGER NOT NULL DEFAULT 1,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE INDEX IF NOT EXISTS paperless_registrations_biller_id ON paperless_registrations (biller_id, id);
CREATE INDEX IF NOT EXISTS paperless_registrations_biller_created ON paperless_registrations (biller_id, created_at);
`

const (
	demoAccountSQL = `INSERT INTO accounts (id, biller_id, account_number, customer_name, email)
VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`
	demoPaymentSQL = `INSERT INTO payments (id, biller_id, account_id, amount_cents, currency, created_at)
VALUES (?, ?, ?, ?, 'USD', COALESCE(?, strftime('%Y-%m-%d %H:%M:%f', 'now')))`
	demoPaperlessSQL = `INSERT INTO paperless_registrations (id, biller_id, account_id, email, enrolled, created_at)
VALUES (?, ?, ?, ?, 1, COALESCE(?, strftime('%Y-%m-%d %H:%M:%f', 'now')))`
)

// DemoSchemaCreate creates the demo source tables (accounts, payments,
// paperless_registrations) if they are missing.
func (s *Store) DemoSchemaCreate(ctx context.Context) error {
	if _, err := s.write.ExecContext(ctx, demoSchemaSQL); err != nil {
		return fmt.Errorf("create demo schema: %w", err)
	}
	return nil
}

// DemoItemsInsert inserts the items and their accounts in one transaction
// with prepared statements and returns their keys in order. An item with
// AccountID zero gets a new account; a non-zero AccountID is created if
// missing; SkipAccount points the item at an account that does not exist.
func (s *Store) DemoItemsInsert(ctx context.Context, demo []store.DemoItem) ([]store.ItemKey, error) {
	keys := make([]store.ItemKey, 0, len(demo))
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		var next int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM accounts`).Scan(&next); err != nil {
			return fmt.Errorf("read accounts: %w", err)
		}
		for _, it := range demo {
			next = max(next, it.AccountID)
		}
		account, err := tx.PrepareContext(ctx, demoAccountSQL)
		if err != nil {
			return err
		}
		defer account.Close()
		payment, err := tx.PrepareContext(ctx, demoPaymentSQL)
		if err != nil {
			return err
		}
		defer payment.Close()
		paperless, err := tx.PrepareContext(ctx, demoPaperlessSQL)
		if err != nil {
			return err
		}
		defer paperless.Close()

		for i, it := range demo {
			accountID := it.AccountID
			switch {
			case it.SkipAccount:
				if accountID == 0 {
					accountID = -1 - int64(i)
				}
			default:
				if accountID == 0 {
					next++
					accountID = next
				}
				email := it.Email
				if email == "" {
					email = fmt.Sprintf("customer%d@example.com", accountID)
				}
				if _, err := account.ExecContext(ctx, accountID, it.BillerID, fmt.Sprintf("ACC-%08d", accountID),
					fmt.Sprintf("Customer %d", accountID), email); err != nil {
					return fmt.Errorf("insert account %d: %w", accountID, err)
				}
			}
			var id any
			if it.ItemID != 0 {
				id = it.ItemID
			}
			var created any
			if !it.CreatedAt.IsZero() {
				created = sourceTimeArg(it.CreatedAt)
			}
			var stmt *sql.Stmt
			var detail any
			switch it.ItemType {
			case items.Payment:
				stmt, detail = payment, it.AmountCents
			case items.Paperless:
				email := it.Email
				if email == "" {
					email = fmt.Sprintf("customer%d@example.com", accountID)
				}
				stmt, detail = paperless, email
			default:
				return fmt.Errorf("item %d: %w: %q (the demo schema has payment and paperless)", i, store.ErrUnknownItemType, it.ItemType)
			}
			res, err := stmt.ExecContext(ctx, id, it.BillerID, accountID, detail, created)
			if err != nil {
				return fmt.Errorf("insert %s item %d: %w", it.ItemType, i, err)
			}
			newID, err := res.LastInsertId()
			if err != nil {
				return fmt.Errorf("insert %s item %d: %w", it.ItemType, i, err)
			}
			keys = append(keys, store.ItemKey{ItemType: it.ItemType, ItemID: newID})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("insert demo items: %w", err)
	}
	return keys, nil
}
