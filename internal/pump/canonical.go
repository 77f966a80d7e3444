package pump

import (
	"bytes"
	"encoding/json"
	"reflect"
	"regexp"
	"time"
	"unicode/utf8"
)

// plainItemSchema reports whether own is generic with itemType narrowed to
// {"const": itemType}, once annotations ($id, title, description,
// $comment) are set aside. It does not change its arguments.
func plainItemSchema(generic, own map[string]any, itemType string) bool {
	want := stripAnnotations(generic).(map[string]any)
	props, ok := want["properties"].(map[string]any)
	if !ok {
		return false
	}
	props["itemType"] = map[string]any{"const": itemType}
	return reflect.DeepEqual(want, stripAnnotations(own))
}

// stripAnnotations drops the schema keywords that do not validate.
func stripAnnotations(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			switch k {
			case "$id", "title", "description", "$comment":
				continue
			}
			out[k] = stripAnnotations(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = stripAnnotations(x)
		}
		return out
	default:
		return v
	}
}

// Patterns and bounds of the generic item schema.
var (
	shardPattern    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	itemTypePattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)
)

const maxNameLength = 128 // shard and billerId maxLength

// canonicalItem is the item schema's fast path, for the bodies the pump
// writes itself. A body that is byte for byte what EncodeItemMessage
// writes for the message it decodes to (so no unknown, repeated, null or
// differently spelled field, and createdAt in UTC), whose values the
// generic item schema accepts, and whose item type has no schema of its
// own or a plain one (plainItemSchema), meets its schema without running
// it. Anything else reports false and goes through the schema, which also
// names the offending field. Running the schema took 8% of a busy item
// consumer's CPU; TestCanonicalItemAcceptsOnlyWhatTheSchemaAccepts holds
// the two paths together.
func canonicalItem(body []byte) (ItemMessage, bool) {
	var m ItemMessage
	if len(body) > MaxBodyBytes || json.Unmarshal(body, &m) != nil || m.validate() != nil {
		return m, false
	}
	c, err := loadContract()
	if err != nil {
		return m, false
	}
	if _, own := c.byItemType[m.ItemType]; own && !c.plainItemType[m.ItemType] {
		return m, false
	}
	switch {
	case len(m.Shard) > maxNameLength || !shardPattern.MatchString(m.Shard),
		!itemTypePattern.MatchString(m.ItemType),
		utf8.RuneCountInString(m.BillerID) > maxNameLength,
		m.CreatedAt != nil && m.CreatedAt.Location() != time.UTC:
		return m, false
	}
	again, err := json.Marshal(m)
	if err != nil || !bytes.Equal(again, body) {
		return m, false
	}
	return m, true
}
