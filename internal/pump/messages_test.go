package pump

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestItemMessageRoundTrip(t *testing.T) {
	t.Parallel()
	created := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	in := ItemMessage{Shard: "shard1", ItemType: "payment", ItemID: 42, BillerID: "b001", Origin: OriginPoll, CreatedAt: &created}
	m, err := EncodeItemMessage(in, ItemMessageID("shard1", "payment", 42))
	require.NoError(t, err)
	require.Equal(t, "shard1:payment:42", m.ID)
	require.Equal(t, "payment", m.Properties[PropItemType])
	require.Equal(t, "b001", m.Properties[PropBillerID])
	require.Equal(t, "1", m.Properties[PropSchemaVersion])
	out, err := DecodeItemMessage(m.Body)
	require.NoError(t, err)
	in.SchemaVersion = SchemaVersion
	require.Equal(t, in, out)
}

func TestBillerMessageRoundTrip(t *testing.T) {
	t.Parallel()
	bucket := time.Unix(1700000000, 0)
	m, err := EncodeBillerMessage(BillerMessage{BillerID: "b001", Shard: "shard1", Pending: 7}, bucket)
	require.NoError(t, err)
	require.Equal(t, "biller:b001:1700000000000", m.ID)
	out, err := DecodeBillerMessage(m.Body)
	require.NoError(t, err)
	require.Equal(t, int64(7), out.Pending)
}

// TestBillerMessageIDsOfSubSecondIntervals: two rounds of a half-second
// interval announce under different MessageIDs, so the broker keeps both.
func TestBillerMessageIDsOfSubSecondIntervals(t *testing.T) {
	t.Parallel()
	interval := 500 * time.Millisecond
	first := time.Unix(1700000000, 100e6).Truncate(interval)
	second := first.Add(interval)
	require.Equal(t, first.Unix(), second.Unix(), "both rounds fall in one second")
	require.NotEqual(t, BillerMessageID("b001", first), BillerMessageID("b001", second))
	require.Equal(t, BillerMessageID("b001", first), BillerMessageID("b001", time.Unix(1700000000, 400e6).Truncate(interval)), "one round's bucket, one ID")
}

func TestDecodeRejectsBadMessagesNamingTheField(t *testing.T) {
	t.Parallel()
	cases := map[string]struct{ body, want string }{
		"not json":         {`{"schemaVersion":`, "invalid message"},
		"wrong version":    {`{"schemaVersion":2,"shard":"s","itemType":"payment","itemId":1,"billerId":"b","origin":"poll"}`, "schemaVersion"},
		"missing shard":    {`{"schemaVersion":1,"itemType":"payment","itemId":1,"billerId":"b","origin":"poll"}`, "shard"},
		"missing type":     {`{"schemaVersion":1,"shard":"s","itemId":1,"billerId":"b","origin":"poll"}`, "itemType"},
		"zero id":          {`{"schemaVersion":1,"shard":"s","itemType":"payment","itemId":0,"billerId":"b","origin":"poll"}`, "itemId"},
		"id wrong type":    {`{"schemaVersion":1,"shard":"s","itemType":"payment","itemId":"7","billerId":"b","origin":"poll"}`, "itemId"},
		"missing biller":   {`{"schemaVersion":1,"shard":"s","itemType":"payment","itemId":1,"origin":"poll"}`, "billerId"},
		"bad origin":       {`{"schemaVersion":1,"shard":"s","itemType":"payment","itemId":1,"billerId":"b","origin":"fax"}`, "origin"},
		"trailing garbage": {`{"schemaVersion":1,"shard":"s","itemType":"payment","itemId":1,"billerId":"b","origin":"poll"} x`, "not JSON"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeItemMessage([]byte(tc.body))
			require.ErrorIs(t, err, ErrInvalidMessage)
			require.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := DecodeBillerMessage([]byte(`{"schemaVersion":1,"shard":"s"}`))
	require.ErrorIs(t, err, ErrInvalidMessage)
	require.Contains(t, err.Error(), "billerId")
}

func TestParseItemMessageID(t *testing.T) {
	t.Parallel()
	shard, typ, id, err := ParseItemMessageID("shard1:payment:42")
	require.NoError(t, err)
	require.Equal(t, "shard1", shard)
	require.Equal(t, "payment", typ)
	require.Equal(t, int64(42), id)
	_, _, id, err = ParseItemMessageID("shard1:payment:42:rescue:17")
	require.NoError(t, err)
	require.Equal(t, int64(42), id)
	for _, bad := range []string{"", "42", "shard1:payment", "shard1:payment:x", ":payment:1", "s:p:-1"} {
		_, _, _, err := ParseItemMessageID(bad)
		require.Error(t, err, bad)
	}
}

// BenchmarkDecodeItemMessage measures what every item message costs the
// item consumer before any database work: schema validation and decoding.
func BenchmarkDecodeItemMessage(b *testing.B) {
	created := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	m, err := EncodeItemMessage(ItemMessage{Shard: "shard1", ItemType: "payment", ItemID: 123456, BillerID: "b0042", Origin: OriginPoll, CreatedAt: &created}, "shard1:payment:123456")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeItemMessage(m.Body); err != nil {
			b.Fatal(err)
		}
	}
}
