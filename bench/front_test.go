package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSplitAtFront(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 12, 1, 18, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	// The last record was Queued 2 s in; three items were delivered by
	// then (one at that very moment), seven in the 5 s after it.
	queued := []time.Time{at(100), at(2000), at(900)}
	accepted := []time.Time{at(500), at(2000), at(1500), at(2100), at(3000), at(4000), at(5000), at(6000), at(6500), at(7000)}
	require.Equal(t, &Front{AllQueuedS: 2, DeliveredBefore: 3, AfterItemsPerS: 7.0 / 5}, splitAtFront(start, 7, queued, accepted))

	require.Nil(t, splitAtFront(start, 7, nil, accepted), "no record was Queued")
	require.Nil(t, splitAtFront(start, 7, []time.Time{at(7000)}, accepted), "the last record was Queued at the last delivery")
}
