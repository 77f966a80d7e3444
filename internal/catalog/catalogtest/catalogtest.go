// Package catalogtest is the conformance suite every catalog.Catalog adapter
// must pass. An adapter's test calls Exercise with a constructor that returns
// a fresh catalog holding exactly the given billers.
package catalogtest

import (
	"context"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
)

// Features declares what an adapter can do.
type Features struct {
	// ReadOnly adapters return catalog.ErrReadOnly from BillerUpsert and
	// BillerSetMode and never change.
	ReadOnly bool
}

// clockWindow is how far a cut-over taken from the catalog's own clock may
// stray from the test process's clock. It is generous on purpose: the suite
// only checks that "now" means now, not the precision of either clock.
const clockWindow = 10 * time.Minute

// Exercise runs the suite. newCatalog must return a fresh, isolated catalog
// holding exactly seed (for SQL adapters a fresh database or schema followed
// by BillerUpsert of each biller; for files, a file written with them). The
// subtests run in parallel, each with its own catalog.
//
// The suite expects: BillerList ordered by id in byte order; every field of
// a biller, CIS endpoint included, round-tripping (CutoverAt to the
// millisecond, a zero CutoverAt staying zero, empty and nil Scopes treated
// alike); UpdatedAt is not compared.
func Exercise(ctx context.Context, t *testing.T, f Features, newCatalog func(t *testing.T, seed []catalog.Biller) catalog.Catalog) {
	t.Helper()

	t.Run("ListEmpty", func(t *testing.T) {
		t.Parallel()
		c := newCatalog(t, nil)
		got, err := c.BillerList(ctx)
		require.NoError(t, err)
		require.Empty(t, got)
	})

	t.Run("ListOrderedByIDWithAllFields", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		got, err := c.BillerList(ctx)
		require.NoError(t, err)

		want := slices.Clone(seed)
		sort.Slice(want, func(i, j int) bool { return want[i].ID < want[j].ID })
		requireBillersEqual(t, want, got)
	})

	t.Run("GetRoundTrips", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		for _, want := range seed {
			got, err := c.BillerGet(ctx, want.ID)
			require.NoError(t, err, "biller %s", want.ID)
			requireBillerEqual(t, want, got)
		}
	})

	t.Run("GetUnknown", func(t *testing.T) {
		t.Parallel()
		c := newCatalog(t, sampleBillers())
		_, err := c.BillerGet(ctx, "no-such-biller")
		require.ErrorIs(t, err, catalog.ErrBillerNotFound)
	})

	if f.ReadOnly {
		exerciseReadOnly(ctx, t, newCatalog)
		return
	}
	exerciseWritable(ctx, t, newCatalog)
}

func exerciseReadOnly(ctx context.Context, t *testing.T, newCatalog func(t *testing.T, seed []catalog.Biller) catalog.Catalog) {
	t.Run("ReadOnlyUpsert", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		changed := seed[0]
		changed.Name = "Changed"
		require.ErrorIs(t, c.BillerUpsert(ctx, changed), catalog.ErrReadOnly)
		require.ErrorIs(t, c.BillerUpsert(ctx, catalog.Biller{ID: "new", Shard: "s", Mode: catalog.ModeOff}), catalog.ErrReadOnly)

		got, err := c.BillerGet(ctx, seed[0].ID)
		require.NoError(t, err)
		requireBillerEqual(t, seed[0], got)
		_, err = c.BillerGet(ctx, "new")
		require.ErrorIs(t, err, catalog.ErrBillerNotFound)
	})

	t.Run("ReadOnlySetMode", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		off := billerWithMode(seed, catalog.ModeOff)
		_, err := c.BillerSetMode(ctx, catalog.SetModeParams{BillerID: off.ID, Mode: catalog.ModePoll})
		require.ErrorIs(t, err, catalog.ErrReadOnly)

		got, err := c.BillerGet(ctx, off.ID)
		require.NoError(t, err)
		requireBillerEqual(t, off, got)
	})
}

func exerciseWritable(ctx context.Context, t *testing.T, newCatalog func(t *testing.T, seed []catalog.Biller) catalog.Catalog) {
	t.Run("UpsertCreatesAndReplaces", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)

		created := catalog.Biller{
			ID: "b100", Name: "New Biller", Shard: "shard9", Mode: catalog.ModeDirect,
			CutoverAt: time.Date(2026, 3, 4, 5, 6, 7, 8_000_000, time.UTC),
			CIS:       catalog.CISEndpoint{BaseURL: "https://cis.new.example", Auth: catalog.AuthNone},
		}
		require.NoError(t, c.BillerUpsert(ctx, created))
		got, err := c.BillerGet(ctx, created.ID)
		require.NoError(t, err)
		requireBillerEqual(t, created, got)
		require.False(t, got.UpdatedAt.IsZero(), "updated_at is set")

		replaced := seed[0]
		replaced.Name = "Renamed"
		replaced.Shard = "shard7"
		replaced.Mode = catalog.ModeOff
		replaced.CutoverAt = time.Time{}
		replaced.CIS = catalog.CISEndpoint{
			BaseURL: "https://other.example", Auth: catalog.AuthOAuth2,
			TokenURL: "https://login.other.example/token", ClientID: "client-2",
			ClientSecretEnv: "OTHER_SECRET", Scopes: []string{"only"},
		}
		require.NoError(t, c.BillerUpsert(ctx, replaced))
		got, err = c.BillerGet(ctx, replaced.ID)
		require.NoError(t, err)
		requireBillerEqual(t, replaced, got)

		list, err := c.BillerList(ctx)
		require.NoError(t, err)
		require.Len(t, list, len(seed)+1, "replacing does not add a biller")
	})

	t.Run("SetModeOffToPollUsesCatalogClock", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		off := billerWithMode(seed, catalog.ModeOff)

		before := time.Now()
		got, err := c.BillerSetMode(ctx, catalog.SetModeParams{BillerID: off.ID, Mode: catalog.ModePoll})
		after := time.Now()
		require.NoError(t, err)
		require.Equal(t, catalog.ModePoll, got.Mode)
		require.False(t, got.CutoverAt.IsZero(), "cut-over set")
		require.False(t, got.CutoverAt.Before(off.CutoverAt), "cut-over %s moved back from %s", got.CutoverAt, off.CutoverAt)
		require.WithinRange(t, got.CutoverAt, before.Add(-clockWindow), after.Add(clockWindow))

		stored, err := c.BillerGet(ctx, off.ID)
		require.NoError(t, err)
		requireBillerEqual(t, got, stored)
		want := off
		want.Mode = catalog.ModePoll
		want.CutoverAt = got.CutoverAt
		requireBillerEqual(t, want, stored)
	})

	t.Run("SetModeOffToDirectUsesGivenCutover", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		off := billerWithMode(seed, catalog.ModeOff)

		cutover := time.Date(2027, 2, 3, 4, 5, 6, 789_000_000, time.UTC)
		got, err := c.BillerSetMode(ctx, catalog.SetModeParams{BillerID: off.ID, Mode: catalog.ModeDirect, CutoverAt: cutover})
		require.NoError(t, err)
		want := off
		want.Mode = catalog.ModeDirect
		want.CutoverAt = cutover
		requireBillerEqual(t, want, got)

		stored, err := c.BillerGet(ctx, off.ID)
		require.NoError(t, err)
		requireBillerEqual(t, want, stored)
	})

	t.Run("SetModeBetweenPollAndDirectKeepsWatermark", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		poll := billerWithMode(seed, catalog.ModePoll)

		got, err := c.BillerSetMode(ctx, catalog.SetModeParams{BillerID: poll.ID, Mode: catalog.ModeDirect})
		require.NoError(t, err)
		want := poll
		want.Mode = catalog.ModeDirect
		requireBillerEqual(t, want, got)

		got, err = c.BillerSetMode(ctx, catalog.SetModeParams{BillerID: poll.ID, Mode: catalog.ModePoll})
		require.NoError(t, err)
		requireBillerEqual(t, poll, got)

		stored, err := c.BillerGet(ctx, poll.ID)
		require.NoError(t, err)
		requireBillerEqual(t, poll, stored)
	})

	t.Run("SetModeSameModeKeepsWatermark", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		poll := billerWithMode(seed, catalog.ModePoll)

		got, err := c.BillerSetMode(ctx, catalog.SetModeParams{BillerID: poll.ID, Mode: catalog.ModePoll})
		require.NoError(t, err)
		requireBillerEqual(t, poll, got)
	})

	t.Run("SetModeToOff", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		poll := billerWithMode(seed, catalog.ModePoll)

		got, err := c.BillerSetMode(ctx, catalog.SetModeParams{BillerID: poll.ID, Mode: catalog.ModeOff})
		require.NoError(t, err)
		require.Equal(t, catalog.ModeOff, got.Mode)
		stored, err := c.BillerGet(ctx, poll.ID)
		require.NoError(t, err)
		require.Equal(t, catalog.ModeOff, stored.Mode)
		requireBillerEqual(t, got, stored)
	})

	t.Run("SetModeUnknownBiller", func(t *testing.T) {
		t.Parallel()
		c := newCatalog(t, sampleBillers())
		_, err := c.BillerSetMode(ctx, catalog.SetModeParams{BillerID: "no-such-biller", Mode: catalog.ModePoll})
		require.ErrorIs(t, err, catalog.ErrBillerNotFound)
		_, err = c.BillerGet(ctx, "no-such-biller")
		require.ErrorIs(t, err, catalog.ErrBillerNotFound, "set-mode does not create a biller")
	})

	t.Run("SetModeInvalidMode", func(t *testing.T) {
		t.Parallel()
		seed := sampleBillers()
		c := newCatalog(t, seed)
		off := billerWithMode(seed, catalog.ModeOff)
		for _, m := range []catalog.Mode{"", "on", "POLL"} {
			_, err := c.BillerSetMode(ctx, catalog.SetModeParams{BillerID: off.ID, Mode: m})
			require.ErrorIs(t, err, catalog.ErrInvalidMode, "mode %q", m)
		}
		stored, err := c.BillerGet(ctx, off.ID)
		require.NoError(t, err)
		requireBillerEqual(t, off, stored)
	})
}

// sampleBillers returns billers covering every field, in an order that is
// not their id order, with ids whose byte order differs from a
// case-insensitive one.
func sampleBillers() []catalog.Biller {
	return []catalog.Biller{
		{
			ID: "b002", Name: "Bravo Gas", Shard: "shard2", Mode: catalog.ModePoll,
			CutoverAt: time.Date(2025, 6, 7, 8, 9, 10, 123_000_000, time.UTC),
			CIS: catalog.CISEndpoint{
				BaseURL: "https://cis.bravo.example", Auth: catalog.AuthOAuth2,
				TokenURL: "https://login.bravo.example/oauth2/token", ClientID: "bravo-pump",
				ClientSecretEnv: "BRAVO_CIS_SECRET", Scopes: []string{"payments.write", "paperless.write"},
				Timeout: 2500 * time.Millisecond, RatePerSecond: 12.5, MaxConcurrent: 4,
			},
		},
		{
			ID: "b001", Name: "Acme Water", Shard: "shard1", Mode: catalog.ModeOff,
			CutoverAt: time.Date(2024, 1, 2, 3, 4, 5, 6_000_000, time.FixedZone("UTC+2", 2*3600)),
			CIS: catalog.CISEndpoint{
				BaseURL: "https://cis.acme.example", Auth: catalog.AuthAPIKey,
				APIKeyEnv: "ACME_CIS_KEY", APIKeyHeader: "X-Api-Key",
				Timeout: 10 * time.Second, RatePerSecond: 50, MaxConcurrent: 8,
			},
		},
		{
			ID: "B003", Name: "Charlie Power", Shard: "shard1", Mode: catalog.ModeDirect,
			CutoverAt: time.Date(2025, 12, 31, 23, 59, 59, 999_000_000, time.UTC),
			CIS:       catalog.CISEndpoint{BaseURL: "http://cis.charlie.example:8080", Auth: catalog.AuthNone},
		},
		{
			ID: "a004", Name: "", Shard: "shard3", Mode: catalog.ModeOff,
		},
	}
}

func billerWithMode(billers []catalog.Biller, m catalog.Mode) catalog.Biller {
	for _, b := range billers {
		if b.Mode == m && !b.CutoverAt.IsZero() {
			return b
		}
	}
	panic("catalogtest: no sample biller with mode " + string(m))
}

// normalized normalises what adapters may legitimately represent
// differently: time zones, nil versus empty scopes, and UpdatedAt.
func normalized(b catalog.Biller) catalog.Biller {
	if b.CutoverAt.IsZero() {
		b.CutoverAt = time.Time{}
	} else {
		b.CutoverAt = b.CutoverAt.UTC()
	}
	if len(b.CIS.Scopes) == 0 {
		b.CIS.Scopes = nil
	}
	b.UpdatedAt = time.Time{}
	return b
}

func requireBillerEqual(t *testing.T, want, got catalog.Biller) {
	t.Helper()
	require.Equal(t, normalized(want), normalized(got), "biller %s", want.ID)
}

func requireBillersEqual(t *testing.T, want, got []catalog.Biller) {
	t.Helper()
	ids := func(bs []catalog.Biller) []string {
		out := make([]string, len(bs))
		for i, b := range bs {
			out[i] = b.ID
		}
		return out
	}
	require.Equal(t, ids(want), ids(got), "billers ordered by id")
	for i := range want {
		requireBillerEqual(t, want[i], got[i])
	}
}
