package pump

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/docs/schemas"
)

// itemFieldValues are raw JSON values for each item message field, valid
// and not; "" leaves the field out.
var itemFieldValues = []struct {
	name   string
	values []string
}{
	{"schemaVersion", []string{`1`, `2`, `0`, `"1"`, `1.0`, `null`, ``}},
	{"shard", []string{`"s1"`, `"shard_2"`, `""`, `"1abc"`, `"a-b"`, q(strings.Repeat("a", 128)), q(strings.Repeat("a", 129)), `"ü"`, `null`, `5`, ``}},
	{"itemType", []string{`"payment"`, `"paperless"`, `"Payment"`, `"other_type"`, q(strings.Repeat("a", 63)), q(strings.Repeat("a", 64)), `""`, `null`, ``}},
	{"itemId", []string{`1`, `42`, `0`, `-1`, `1.5`, `1e3`, `"5"`, `9007199254740993`, `null`, ``}},
	{"billerId", []string{`"b1"`, `""`, q(strings.Repeat("é", 128)), q(strings.Repeat("é", 129)), `"a\"b"`, `"\u003cb\u003e"`, `"<b>"`, `null`, `7`, ``}},
	{"origin", []string{`"poll"`, `"direct"`, `"rescue"`, `"POLL"`, `""`, `null`, ``}},
	{"createdAt", []string{`"2026-12-01T10:00:00Z"`, `"2026-12-01T10:00:00.123456789Z"`, `"2026-12-01T10:00:00.500Z"`,
		`"2026-12-01T10:00:00+02:00"`, `"2026-02-30T10:00:00Z"`, `"2026-12-01 10:00:00Z"`, `""`, `null`, `5`, ``}},
}

func q(s string) string { b, _ := json.Marshal(s); return string(b) }

// randomItemBody builds a body from one value per field, sometimes with an
// unknown field, the fields out of order, a repeated field or whitespace.
func randomItemBody(r *rand.Rand) []byte {
	var fields []string
	for _, f := range itemFieldValues {
		// Mostly the first (valid) values, so that valid and near-valid
		// bodies are common.
		v := f.values[0]
		if r.IntN(3) == 0 {
			v = f.values[r.IntN(len(f.values))]
		}
		if v != "" {
			fields = append(fields, `"`+f.name+`":`+v)
		}
	}
	switch r.IntN(8) {
	case 0:
		fields = append(fields, `"extra":1`)
	case 1:
		r.Shuffle(len(fields), func(i, j int) { fields[i], fields[j] = fields[j], fields[i] })
	case 2:
		if len(fields) > 0 {
			fields = append(fields, fields[r.IntN(len(fields))])
		}
	case 3:
		return []byte("{ " + strings.Join(fields, ", ") + " }")
	case 4:
		for i := range fields {
			fields[i] = strings.ToUpper(fields[i][:2]) + fields[i][2:]
		}
	}
	return []byte("{" + strings.Join(fields, ",") + "}")
}

// TestCanonicalItemAcceptsOnlyWhatTheSchemaAccepts: every body the fast
// path accepts, the item schemas accept too, and it decodes to the same
// message; the pump's own messages take the fast path.
func TestCanonicalItemAcceptsOnlyWhatTheSchemaAccepts(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	fast, slowValid := 0, 0
	for range 20000 {
		body := randomItemBody(r)
		m, ok := canonicalItem(body)
		schemaErr := validateBodyBy(body, itemSchemas)
		if !ok {
			if schemaErr == nil {
				slowValid++
			}
			continue
		}
		fast++
		require.NoError(t, schemaErr, "the fast path accepted %s", body)
		var slow ItemMessage
		require.NoError(t, decodeStrict(body, &slow), "%s", body)
		require.Equal(t, slow, m, "%s", body)
	}
	require.Greater(t, fast, 1000, "the fast path saw many bodies it accepts")
	require.Greater(t, slowValid, 100, "and many valid ones it leaves to the schema")

	created := time.Date(2026, 12, 1, 10, 0, 0, 123000000, time.UTC)
	for _, m := range []ItemMessage{
		itemMessageFor(ItemRef{Shard: "s1", BillerID: "b1"}, OriginPoll, created),
		{Shard: "shard_2", ItemType: "paperless", ItemID: 9, BillerID: "Biller <7> & \"co\"", Origin: OriginDirect},
		{Shard: "s1", ItemType: "custom-type", ItemID: 1 << 60, BillerID: strings.Repeat("é", 128), Origin: OriginRescue},
	} {
		if m.ItemType == "" {
			m.ItemType, m.ItemID = "payment", 3
		}
		msg, err := EncodeItemMessage(m, "id")
		require.NoError(t, err)
		got, ok := canonicalItem(msg.Body)
		require.True(t, ok, "the pump's own message takes the fast path: %s", msg.Body)
		m.SchemaVersion = SchemaVersion
		require.Equal(t, m, got)
	}
}

// TestPlainItemSchemaIsTheGenericOneNarrowed: the built-in item types'
// schemas are plain; one that adds a constraint, or narrows a field
// further, is not and keeps the full validation.
func TestPlainItemSchemaIsTheGenericOneNarrowed(t *testing.T) {
	t.Parallel()
	c, err := loadContract()
	require.NoError(t, err)
	require.NotEmpty(t, c.plainItemType)
	for itemType, plain := range c.plainItemType {
		require.True(t, plain, itemType)
	}

	generic := readSchema(t, schemas.ItemMessage)
	own := readSchema(t, "payment-"+schemas.ItemMessage)
	require.True(t, plainItemSchema(generic, own, "payment"))
	require.False(t, plainItemSchema(generic, own, "paperless"), "narrowed to another type")

	var edited map[string]any
	raw, _ := json.Marshal(own)
	require.NoError(t, json.Unmarshal(raw, &edited))
	edited["title"] = "a new title"
	require.True(t, plainItemSchema(generic, edited, "payment"), "annotations do not count")
	edited["required"] = append(edited["required"].([]any), "amountCents")
	require.False(t, plainItemSchema(generic, edited, "payment"), "an added requirement")

	require.NoError(t, json.Unmarshal(raw, &edited))
	edited["properties"].(map[string]any)["billerId"].(map[string]any)["maxLength"] = 16.0
	require.False(t, plainItemSchema(generic, edited, "payment"), "a field narrowed further")
	require.True(t, plainItemSchema(generic, own, "payment"), "the arguments are left as they were")
}
