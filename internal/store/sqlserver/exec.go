package sqlserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// SQL Server error numbers the adapter acts on.
const (
	errDeadlock     = 1205 // chosen as deadlock victim: the transaction was rolled back
	errDuplicateKey = 2627 // violation of a PRIMARY KEY or UNIQUE constraint
	errDuplicateRow = 2601 // duplicate key row in a unique index
)

// deadlockRetries bounds how often a statement or transaction chosen as a
// deadlock victim is run again.
const deadlockRetries = 5

// sqlErrorNumber returns the SQL Server error number in err's chain, or 0.
func sqlErrorNumber(err error) int32 {
	var e interface{ SQLErrorNumber() int32 }
	if errors.As(err, &e) {
		return e.SQLErrorNumber()
	}
	return 0
}

func isDeadlock(err error) bool { return sqlErrorNumber(err) == errDeadlock }

func isDuplicateKey(err error) bool {
	n := sqlErrorNumber(err)
	return n == errDuplicateKey || n == errDuplicateRow
}

// retryDeadlock runs fn, and runs it again after a short pause while it
// fails as a deadlock victim: SQL Server rolled the victim back whole, so a
// repeat is safe for every statement and transaction of this adapter.
func (s *Store) retryDeadlock(ctx context.Context, fn func() error) error {
	var err error
	for attempt := 1; attempt <= deadlockRetries; attempt++ {
		if err = fn(); err == nil || !isDeadlock(err) {
			return err
		}
		s.log.DebugContext(ctx, "deadlock victim, trying again", "attempt", attempt)
		t := time.NewTimer(time.Duration(attempt) * 5 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
	return err
}

// inTx runs fn in a READ COMMITTED transaction and commits it.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// rowCount runs a batch that ends in SELECT @@ROWCOUNT and returns it. The
// count is selected rather than read from the driver's result because SET
// NOCOUNT ON (which keeps the batch's other statements quiet) also hides it.
func (s *Store) rowCount(ctx context.Context, q string, args []any) (int64, error) {
	var n int64
	err := s.retryDeadlock(ctx, func() error {
		return s.db.QueryRowContext(ctx, q, args...).Scan(&n)
	})
	return n, err
}
