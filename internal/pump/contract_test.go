package pump

import (
	"encoding/json"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/docs/schemas"
)

// Every message the pump produces validates against the published schemas.
func TestProducedMessagesValidate(t *testing.T) {
	t.Parallel()
	created := time.Now().UTC()
	for _, typ := range []string{"payment", "paperless", "refund"} {
		for _, origin := range []string{OriginPoll, OriginDirect, OriginRescue} {
			in := ItemMessage{Shard: "shard1", ItemType: typ, ItemID: 9, BillerID: "b1", Origin: origin, CreatedAt: &created}
			m, err := EncodeItemMessage(in, ItemMessageID("shard1", typ, 9))
			require.NoError(t, err)
			require.NoError(t, validateBody(m.Body, schemas.ItemMessageFor(typ)), "%s/%s", typ, origin)
			require.NoError(t, validateBody(m.Body, schemas.ItemMessage))
		}
	}
	m, err := EncodeItemMessage(ItemMessage{Shard: "s", ItemType: "payment", ItemID: 1, BillerID: "b", Origin: OriginPoll}, "s:payment:1")
	require.NoError(t, err)
	require.NoError(t, validateBody(m.Body, schemas.ItemMessageFor("payment")), "createdAt is optional")
	bm, err := EncodeBillerMessage(BillerMessage{BillerID: "b1", Shard: "shard1", Pending: 3, PublishedAt: created}, created)
	require.NoError(t, err)
	require.NoError(t, validateBody(bm.Body, schemas.BillerMessage))
}

func TestSchemasRejectInvalidMessagesNamingTheField(t *testing.T) {
	t.Parallel()
	valid := `{"schemaVersion":1,"shard":"shard1","itemType":"payment","itemId":1,"billerId":"b1","origin":"direct"}`
	cases := map[string]struct{ body, want string }{
		"missing field":       {`{"schemaVersion":1,"shard":"shard1","itemType":"payment","itemId":1,"origin":"direct"}`, "billerId"},
		"wrong type":          {strings.Replace(valid, `"itemId":1`, `"itemId":"one"`, 1), "/itemId"},
		"bad item type":       {strings.Replace(valid, `"itemType":"payment"`, `"itemType":"Refund Now"`, 1), "/itemType"},
		"wrong schemaVersion": {strings.Replace(valid, `"schemaVersion":1`, `"schemaVersion":2`, 1), "/schemaVersion"},
		"bad created at":      {strings.Replace(valid, `"origin":"direct"`, `"origin":"direct","createdAt":"yesterday"`, 1), "/createdAt"},
		"oversize body":       {strings.Replace(valid, `"origin":"direct"`, `"origin":"direct","pad":"`+strings.Repeat("x", MaxBodyBytes)+`"`, 1), "body"},
		"not an object":       {`[1,2]`, "/"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeItemMessage([]byte(tc.body))
			require.ErrorIs(t, err, ErrInvalidMessage)
			require.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := DecodeItemMessage([]byte(valid))
	require.NoError(t, err)
	_, err = DecodeBillerMessage([]byte(`{"schemaVersion":1,"billerId":"b1","shard":"s1","pending":"many","publishedAt":"2026-01-01T00:00:00Z"}`))
	require.ErrorIs(t, err, ErrInvalidMessage)
	require.Contains(t, err.Error(), "/pending")
}

// TestItemTypeSchemasHoldTheGenericOne: an item type's own schema requires
// every field the generic item schema requires and constrains each of its
// properties alike (itemType only more narrowly), so a message that meets
// its type's schema meets the generic one and is validated once.
func TestItemTypeSchemasHoldTheGenericOne(t *testing.T) {
	t.Parallel()
	generic := readSchema(t, schemas.ItemMessage)
	names, err := fs.Glob(schemas.Files, "*-"+schemas.ItemMessage)
	require.NoError(t, err)
	require.NotEmpty(t, names)
	for _, name := range names {
		own := readSchema(t, name)
		require.Subset(t, own["required"], generic["required"], "%s requires what the generic schema requires", name)
		require.Equal(t, generic["type"], own["type"], name)
		ownProps := own["properties"].(map[string]any)
		for prop, def := range generic["properties"].(map[string]any) {
			require.Contains(t, ownProps, prop, "%s defines %s", name, prop)
			if prop == "itemType" {
				itemType := strings.TrimSuffix(name, "-"+schemas.ItemMessage)
				require.Equal(t, map[string]any{"const": itemType}, ownProps[prop], "%s narrows itemType to its own", name)
				continue
			}
			require.Equal(t, def, ownProps[prop], "%s constrains %s as the generic schema does", name, prop)
		}
		for _, key := range []string{"additionalProperties", "allOf", "anyOf", "oneOf", "not", "if"} {
			require.Equal(t, generic[key], own[key], "%s: %s", name, key)
		}
	}
}

// readSchema reads a schema file as a JSON document.
func readSchema(t *testing.T, name string) map[string]any {
	t.Helper()
	raw, err := schemas.Files.ReadFile(name)
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(raw, &doc))
	return doc
}
