package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

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
	var holder string
	err := s.pool.QueryRow(ctx, `
		INSERT INTO datapump_lease (name, owner, expires_at)
		VALUES ($1, $2, clock_timestamp() + $3 * interval '1 microsecond')
		ON CONFLICT (name) DO UPDATE
		SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
		WHERE datapump_lease.owner = EXCLUDED.owner OR datapump_lease.expires_at <= clock_timestamp()
		RETURNING owner`,
		name, owner, micros(ttl)).Scan(&holder)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	return holder == owner, nil
}

// LeaseRelease gives the lease up if owner holds it.
func (s *Store) LeaseRelease(ctx context.Context, name, owner string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM datapump_lease WHERE name = $1 AND owner = $2`, name, owner); err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}
