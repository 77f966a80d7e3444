package pump

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/datapump/datapump/docs/schemas"
	"github.com/datapump/datapump/internal/bus"
)

// SchemaVersion is the version of the message bodies this build writes and reads.
const SchemaVersion = 1

// Application property names carried on every message.
const (
	PropSchemaVersion = "schemaVersion"
	PropItemType      = "itemType"
	PropBillerID      = "billerId"
	PropShard         = "shard"
	PropOrigin        = "origin"
	PropTraceParent   = "traceparent"
)

// Origins of an item message.
const (
	OriginPoll   = "poll"
	OriginDirect = "direct"
	OriginRescue = "rescue"
)

// ErrInvalidMessage wraps every decoding or validation failure of a message body.
var ErrInvalidMessage = errors.New("invalid message")

// BillerMessage announces that a biller has pending items
// (topic data-pump-data-created).
type BillerMessage struct {
	SchemaVersion int       `json:"schemaVersion"`
	BillerID      string    `json:"billerId"`
	Shard         string    `json:"shard"`
	Pending       int64     `json:"pending"`
	PublishedAt   time.Time `json:"publishedAt"`
	// OldestPendingAt is the created-at of the oldest pending item the
	// publisher counted: where the biller consumer's claim starts.
	OldestPendingAt *time.Time `json:"oldestPendingAt,omitempty"`
}

// ItemMessage announces one work item (topic of its item type).
type ItemMessage struct {
	SchemaVersion int    `json:"schemaVersion"`
	Shard         string `json:"shard"`
	ItemType      string `json:"itemType"`
	ItemID        int64  `json:"itemId"`
	BillerID      string `json:"billerId"`
	// Origin is "poll", "direct" or "rescue".
	Origin string `json:"origin"`
	// CreatedAt is the source row's created-at, when known.
	CreatedAt *time.Time `json:"createdAt,omitempty"`
}

// ItemMessageID is the deterministic MessageID of an item: it is also the
// Idempotency-Key the CIS receives.
func ItemMessageID(shard, itemType string, itemID int64) string {
	return fmt.Sprintf("%s:%s:%d", shard, itemType, itemID)
}

// BillerMessageID is the deterministic MessageID of a biller announcement in
// one publisher interval (bucket, in unix milliseconds), so two publishers
// in one interval send one. Milliseconds, not seconds: with an interval
// under a second, two rounds' buckets would share a second and the
// broker would drop every other round's announcements as duplicates.
func BillerMessageID(billerID string, bucket time.Time) string {
	return fmt.Sprintf("biller:%s:%d", billerID, bucket.UnixMilli())
}

// EncodeBillerMessage builds the bus message for m.
func EncodeBillerMessage(m BillerMessage, bucket time.Time) (bus.Message, error) {
	m.SchemaVersion = SchemaVersion
	if err := m.validate(); err != nil {
		return bus.Message{}, err
	}
	body, err := json.Marshal(m)
	if err != nil {
		return bus.Message{}, fmt.Errorf("encode biller message: %w", err)
	}
	return bus.Message{
		ID:   BillerMessageID(m.BillerID, bucket),
		Body: body,
		Properties: map[string]string{
			PropSchemaVersion: fmt.Sprint(SchemaVersion),
			PropBillerID:      m.BillerID,
			PropShard:         m.Shard,
		},
	}, nil
}

// DecodeBillerMessage parses and validates a biller message body.
func DecodeBillerMessage(body []byte) (BillerMessage, error) {
	var m BillerMessage
	if err := validateBody(body, schemas.BillerMessage); err != nil {
		return m, err
	}
	if err := decodeStrict(body, &m); err != nil {
		return m, err
	}
	return m, m.validate()
}

func (m BillerMessage) validate() error {
	switch {
	case m.SchemaVersion != SchemaVersion:
		return fmt.Errorf("%w: schemaVersion: %d is not %d", ErrInvalidMessage, m.SchemaVersion, SchemaVersion)
	case m.BillerID == "":
		return fmt.Errorf("%w: billerId: required", ErrInvalidMessage)
	case m.Shard == "":
		return fmt.Errorf("%w: shard: required", ErrInvalidMessage)
	}
	return nil
}

// EncodeItemMessage builds the bus message for m with the given MessageID.
func EncodeItemMessage(m ItemMessage, messageID string) (bus.Message, error) {
	m.SchemaVersion = SchemaVersion
	if err := m.validate(); err != nil {
		return bus.Message{}, err
	}
	body, err := json.Marshal(m)
	if err != nil {
		return bus.Message{}, fmt.Errorf("encode item message: %w", err)
	}
	return bus.Message{
		ID:   messageID,
		Body: body,
		Properties: map[string]string{
			PropSchemaVersion: fmt.Sprint(SchemaVersion),
			PropItemType:      m.ItemType,
			PropBillerID:      m.BillerID,
			PropShard:         m.Shard,
			PropOrigin:        m.Origin,
		},
	}, nil
}

// DecodeItemMessage parses and validates an item message body.
func DecodeItemMessage(body []byte) (ItemMessage, error) {
	if m, ok := canonicalItem(body); ok {
		return m, nil
	}
	var m ItemMessage
	if err := validateBodyBy(body, itemSchemas); err != nil {
		return m, err
	}
	if err := decodeStrict(body, &m); err != nil {
		return m, err
	}
	return m, m.validate()
}

func (m ItemMessage) validate() error {
	switch {
	case m.SchemaVersion != SchemaVersion:
		return fmt.Errorf("%w: schemaVersion: %d is not %d", ErrInvalidMessage, m.SchemaVersion, SchemaVersion)
	case m.Shard == "":
		return fmt.Errorf("%w: shard: required", ErrInvalidMessage)
	case m.ItemType == "":
		return fmt.Errorf("%w: itemType: required", ErrInvalidMessage)
	case m.ItemID <= 0:
		return fmt.Errorf("%w: itemId: %d is not a positive id", ErrInvalidMessage, m.ItemID)
	case m.BillerID == "":
		return fmt.Errorf("%w: billerId: required", ErrInvalidMessage)
	case m.Origin != OriginPoll && m.Origin != OriginDirect && m.Origin != OriginRescue:
		return fmt.Errorf("%w: origin: %q (want poll, direct or rescue)", ErrInvalidMessage, m.Origin)
	}
	return nil
}

// decodeStrict decodes one JSON object; unknown fields are tolerated so a
// newer producer can add optional fields within a schema version.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidMessage, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON object", ErrInvalidMessage)
	}
	return nil
}

// ParseItemMessageID splits "{shard}:{itemType}:{itemId}" (with an optional
// ":suffix" of a rescue or retry) into its parts.
func ParseItemMessageID(id string) (shard, itemType string, itemID int64, err error) {
	parts := strings.Split(id, ":")
	if len(parts) < 3 || parts[0] == "" || parts[1] == "" {
		return "", "", 0, fmt.Errorf("%q is not an item id of the form shard:itemType:itemId", id)
	}
	n, perr := strconv.ParseInt(parts[2], 10, 64)
	if perr != nil || n <= 0 {
		return "", "", 0, fmt.Errorf("%q: item id %q is not a positive integer", id, parts[2])
	}
	return parts[0], parts[1], n, nil
}
