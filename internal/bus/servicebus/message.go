package servicebus

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/datapump/datapump/internal/bus"
)

// maxMessageIDLength is Service Bus's limit on MessageId.
const maxMessageIDLength = 128

// Application properties the adapter and the broker write. Publish
// refuses them in bus.Message.Properties and reading strips them.
const (
	// propPrefix starts every property the adapter sets itself.
	propPrefix = "Datapump-"
	// propDeliveryCount is set when the adapter dead-letters a message: how
	// many times it was delivered.
	propDeliveryCount = propPrefix + "Delivery-Count"
	// propDeadLetteredAt is set when the adapter dead-letters a message
	// (RFC 3339, UTC).
	propDeadLetteredAt = propPrefix + "Dead-Lettered-At"
	// The broker stores a dead-letter's reason and description as
	// application properties under these names.
	propDeadLetterReason      = "DeadLetterReason"
	propDeadLetterDescription = "DeadLetterErrorDescription"
)

// reservedProperty reports whether a property name belongs to the adapter
// or the broker.
func reservedProperty(name string) bool {
	return len(name) >= len(propPrefix) && strings.EqualFold(name[:len(propPrefix)], propPrefix) ||
		strings.EqualFold(name, propDeadLetterReason) ||
		strings.EqualFold(name, propDeadLetterDescription)
}

// toServiceBus maps a bus message to the SDK's: MessageID is Message.ID
// (the key of the broker's duplicate detection), Body is the body, and
// every property becomes a string application property.
func toServiceBus(m bus.Message) (*azservicebus.Message, error) {
	if len(m.ID) > maxMessageIDLength {
		return nil, fmt.Errorf("message id is %d characters, Service Bus allows %d", len(m.ID), maxMessageIDLength)
	}
	sm := &azservicebus.Message{Body: m.Body}
	if m.ID != "" {
		id := m.ID
		sm.MessageID = &id
	}
	if len(m.Properties) > 0 {
		sm.ApplicationProperties = make(map[string]any, len(m.Properties))
		for k, v := range m.Properties {
			if k == "" {
				return nil, errors.New("empty property name")
			}
			if reservedProperty(k) {
				return nil, fmt.Errorf("property %q is reserved (names starting with %q, %q and %q belong to the adapter and the broker)",
					k, propPrefix, propDeadLetterReason, propDeadLetterDescription)
			}
			sm.ApplicationProperties[k] = v
		}
	}
	return sm, nil
}

// fromServiceBus maps a received message back to a bus message, leaving
// out the adapter's and the broker's properties.
func fromServiceBus(rm *azservicebus.ReceivedMessage) bus.Message {
	m := bus.Message{ID: messageID(rm), Body: rm.Body}
	for k, v := range rm.ApplicationProperties {
		if reservedProperty(k) {
			continue
		}
		if m.Properties == nil {
			m.Properties = make(map[string]string, len(rm.ApplicationProperties))
		}
		m.Properties[k] = propertyString(v)
	}
	return m
}

// messageID is the message's MessageId; producers other than this adapter
// may send a non-string AMQP message-id, which the SDK leaves out of
// ReceivedMessage.MessageID.
func messageID(rm *azservicebus.ReceivedMessage) string {
	if rm.MessageID != "" {
		return rm.MessageID
	}
	if raw := rm.RawAMQPMessage; raw != nil && raw.Properties != nil && raw.Properties.MessageID != nil {
		return fmt.Sprint(raw.Properties.MessageID)
	}
	return ""
}

// propertyString renders an application property value; this adapter
// writes strings, other producers may write numbers, booleans or times.
func propertyString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano)
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// propertyInt reads an integer property the adapter wrote.
func propertyInt(props map[string]any, name string) (int, bool) {
	switch v := props[name].(type) {
	case int64:
		return int(v), true
	case int32:
		return int(v), true
	case int:
		return v, true
	case uint32:
		return int(v), true
	case uint64:
		return int(v), true
	case string:
		n, err := strconv.Atoi(v)
		return n, err == nil
	default:
		return 0, false
	}
}

// propertyTime reads a time property the adapter wrote.
func propertyTime(props map[string]any, name string) (time.Time, bool) {
	switch v := props[name].(type) {
	case time.Time:
		return v, true
	case string:
		t, err := time.Parse(time.RFC3339Nano, v)
		return t, err == nil
	default:
		return time.Time{}, false
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
