package storetest

import (
	"time"

	"github.com/stretchr/testify/require"
)

func (e *env) acquire(name, owner string, ttl time.Duration) bool {
	e.t.Helper()
	ok, err := e.h.Leaser.LeaseAcquire(e.ctx, name, owner, ttl)
	require.NoError(e.t, err, "lease acquire %s by %s", name, owner)
	return ok
}

func testLeaser(e *env) {
	const name = "publisher"
	require.True(e.t, e.acquire(name, "a", hour), "a free lease is taken")
	require.False(e.t, e.acquire(name, "b", hour), "held by a")
	require.True(e.t, e.acquire(name, "a", hour), "the holder renews")
	require.False(e.t, e.acquire(name, "b", hour), "still held by a")
	require.True(e.t, e.acquire("rescuer", "b", hour), "leases are independent by name")

	require.NoError(e.t, e.h.Leaser.LeaseRelease(e.ctx, name, "b"), "release by a non-holder")
	require.False(e.t, e.acquire(name, "b", hour), "a non-holder's release changes nothing")

	require.NoError(e.t, e.h.Leaser.LeaseRelease(e.ctx, name, "a"))
	require.True(e.t, e.acquire(name, "b", hour), "released: taken at once")
	require.False(e.t, e.acquire(name, "a", hour))
	require.NoError(e.t, e.h.Leaser.LeaseRelease(e.ctx, "never-taken", "a"), "releasing an unknown lease")
}

func testLeaserExpiry(e *env) {
	const name = "publisher"
	require.True(e.t, e.acquire(name, "a", expire))
	time.Sleep(pause)
	require.True(e.t, e.acquire(name, "b", hour), "an expired lease is taken over")
	require.False(e.t, e.acquire(name, "a", hour), "the old holder lost it")

	// The holder renews with a short ttl; once that is over, the lease is free.
	require.True(e.t, e.acquire(name, "b", expire))
	time.Sleep(pause)
	require.True(e.t, e.acquire(name, "a", hour))
}
