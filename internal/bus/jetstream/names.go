package jetstream

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Names of the dead-letter stream and the prefix of its subjects.
const (
	deadLetterStream = "DLQ"
	deadLetterPrefix = "dlq"
)

// Headers the adapter reserves. Properties may use neither prefix.
const (
	headerMsgID      = "Nats-Msg-Id"
	reservedNATS     = "nats-"
	reservedAdapter  = "datapump-"
	hdrMessageID     = "Datapump-Message-Id"
	hdrReason        = "Datapump-Dead-Letter-Reason"
	hdrDescription   = "Datapump-Dead-Letter-Description"
	hdrDeliveryCount = "Datapump-Delivery-Count"
	hdrTopic         = "Datapump-Topic"
	hdrSubscription  = "Datapump-Subscription"
	hdrStreamSeq     = "Datapump-Stream-Sequence"
	hdrEnqueuedAt    = "Datapump-Enqueued-At"
)

// maxDescription caps the dead-letter description kept in a header.
const maxDescription = 4096

// sanitizeName turns a topic or subscription name into a valid stream or
// consumer name.
func sanitizeName(name string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', '*', '>', '/', '\\', ' ', '\t', '\r', '\n':
			return '_'
		}
		if r < 0x20 || r == 0x7f {
			return '_'
		}
		return r
	}, name)
}

// streamName is the stream holding a topic.
func streamName(topic string) string { return sanitizeName(topic) }

// consumerName is the durable consumer behind a subscription.
func consumerName(subscription string) string { return sanitizeName(subscription) }

// deadLetterSubject is where a consumer's dead letters go. Stream and
// consumer names are single subject tokens by construction.
func deadLetterSubject(stream, consumer string) string {
	return deadLetterPrefix + "." + stream + "." + consumer
}

// validateTopic checks that a topic name can be a stream's only subject.
func validateTopic(topic string) error {
	if topic == "" {
		return errors.New("topic name is empty")
	}
	if strings.HasPrefix(topic, deadLetterPrefix+".") || topic == deadLetterPrefix {
		return fmt.Errorf("topic %q: the %q subjects are reserved for dead letters", topic, deadLetterPrefix+".>")
	}
	if strings.HasPrefix(topic, "$") {
		return fmt.Errorf("topic %q: subjects starting with $ are reserved by NATS", topic)
	}
	for token := range strings.SplitSeq(topic, ".") {
		if token == "" {
			return fmt.Errorf("topic %q: empty subject token", topic)
		}
		if token == "*" || token == ">" {
			return fmt.Errorf("topic %q: wildcards are not allowed", topic)
		}
		if strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return fmt.Errorf("topic %q: whitespace or control characters are not allowed", topic)
		}
	}
	return nil
}

// validateSubscription checks a subscription name.
func validateSubscription(name string) error {
	if name == "" {
		return errors.New("subscription name is empty")
	}
	return nil
}

// validateProperty checks that a property survives as a NATS header.
func validateProperty(key, value string) error {
	if key == "" {
		return errors.New("property name is empty")
	}
	lower := strings.ToLower(key)
	if strings.HasPrefix(lower, reservedNATS) || strings.HasPrefix(lower, reservedAdapter) {
		return fmt.Errorf("property %q: names starting with Nats- or Datapump- are reserved", key)
	}
	for _, r := range key {
		if r <= ' ' || r >= 0x7f || r == ':' {
			return fmt.Errorf("property %q: names must be printable ASCII without spaces or ':'", key)
		}
	}
	if strings.ContainsAny(value, "\r\n") {
		return fmt.Errorf("property %q: values may not contain CR or LF", key)
	}
	if strings.TrimLeft(value, " \t") != value || strings.TrimRight(value, " \t") != value {
		return fmt.Errorf("property %q: values may not start or end with a space or tab", key)
	}
	return nil
}

// headerValue makes free text (a dead-letter description) safe for a header.
func headerValue(s string) string {
	s = strings.TrimLeft(strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s), " \t")
	if len(s) > maxDescription {
		n := maxDescription
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	return s
}

// isReservedHeader reports whether a header is the adapter's or NATS's,
// not an application property.
func isReservedHeader(key string) bool {
	lower := strings.ToLower(key)
	return strings.HasPrefix(lower, reservedNATS) || strings.HasPrefix(lower, reservedAdapter)
}
