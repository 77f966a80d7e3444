package sqlserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// leaseAcquireSQL takes a free or expired lease, or renews the owner's own,
// until @now + ttl, and returns who holds it afterwards. It runs in a
// transaction.
//
// Locking review: an upsert without MERGE (which is not atomic without
// HOLDLOCK). The UPDATE reads the lease row WITH (UPDLOCK, HOLDLOCK): the
// row's key, or on a first acquire the empty key range, stays locked (U,
// RangeS-U) until commit whether or not the UPDATE changed it, so the
// INSERT that follows when nothing was updated cannot race another
// acquirer's: that one waits on the same lock and then sees this row. The
// INSERT's own existence check covers a row held by another owner.
func (s *Store) leaseAcquireSQL(name, owner string, ttlMS int32) (string, params) {
	var p params
	n, o, ttl := p.add(name), p.add(owner), p.add(ttlMS)
	q := `SET NOCOUNT ON;
` + declareNow + `
UPDATE ` + s.t.lease + ` WITH (UPDLOCK, HOLDLOCK)
SET owner = ` + o + `, expires_at = DATEADD(millisecond, ` + ttl + `, @now)
WHERE name = ` + n + ` AND (owner = ` + o + ` OR expires_at <= @now);
IF @@ROWCOUNT = 0
    INSERT INTO ` + s.t.lease + ` (name, owner, expires_at)
    SELECT ` + n + `, ` + o + `, DATEADD(millisecond, ` + ttl + `, @now)
    WHERE NOT EXISTS (SELECT 1 FROM ` + s.t.lease + ` WITH (UPDLOCK, HOLDLOCK) WHERE name = ` + n + `);
SELECT owner FROM ` + s.t.lease + ` WHERE name = ` + n + `;`
	return q, p
}

// leaseReleaseSQL gives the lease up if owner holds it. Locking review: a
// single-key delete on the primary key; the owner condition is checked on
// the X-locked row, so a lease another owner took over is left alone.
func (s *Store) leaseReleaseSQL(name, owner string) (string, params) {
	var p params
	return `DELETE FROM ` + s.t.lease + ` WHERE name = ` + p.add(name) + ` AND owner = ` + p.add(owner), p
}

// LeaseAcquire takes the named lease for owner, or renews it if owner
// already holds it, until now + ttl by the database clock. It returns true
// while owner holds it; an unexpired lease of another owner is left alone.
func (s *Store) LeaseAcquire(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	if name == "" || owner == "" {
		return false, errors.New("acquire lease: name and owner are required")
	}
	if ttl <= 0 {
		return false, fmt.Errorf("acquire lease %s: ttl: %s must be positive", name, ttl)
	}
	ms, err := millis("ttl", ttl)
	if err != nil {
		return false, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	q, args := s.leaseAcquireSQL(name, owner, ms)
	var holder string
	err = s.retryDeadlock(ctx, func() error {
		return s.inTx(ctx, func(tx *sql.Tx) error {
			return tx.QueryRowContext(ctx, q, args...).Scan(&holder)
		})
	})
	if err != nil {
		return false, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	return holder == owner, nil
}

// LeaseRelease gives the lease up if owner holds it.
func (s *Store) LeaseRelease(ctx context.Context, name, owner string) error {
	q, args := s.leaseReleaseSQL(name, owner)
	if _, err := s.db.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}
