package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// leaseAcquireSQL takes a free or expired lease, or renews the owner's own.
const leaseAcquireSQL = `INSERT INTO datapump_lease (name, owner, expires_at)
VALUES (:name, :owner, ` + nowMS + ` + :ttl)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE datapump_lease.owner = excluded.owner OR datapump_lease.expires_at <= ` + nowMS

// LeaseAcquire takes or renews the named lease for owner for ttl, by the
// database clock; it returns true while owner holds it.
func (s *Store) LeaseAcquire(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	var n int64
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, leaseAcquireSQL, sql.Named("name", name), sql.Named("owner", owner), sql.Named("ttl", durationMS(ttl)))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	return n == 1, nil
}

// LeaseRelease gives the lease up if owner holds it.
func (s *Store) LeaseRelease(ctx context.Context, name, owner string) error {
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM datapump_lease WHERE name = :name AND owner = :owner`,
			sql.Named("name", name), sql.Named("owner", owner))
		return err
	})
	if err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}
