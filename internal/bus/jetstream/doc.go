// Package jetstream is the NATS JetStream adapter of bus.Bus. By default it
// starts a NATS server with JetStream inside the process (no network
// listener); with Config.URL it connects to an external server or cluster.
//
// # Mapping
//
// JetStream is not Service Bus; this is how the port's concepts land on it:
//
//   - A topic is a stream. Its name is the topic with every character that
//     a stream name may not hold ('.', '*', '>', '/', '\', whitespace)
//     replaced by '_'; its only subject is the topic name itself (so a topic
//     must be a literal subject: no wildcards, no empty tokens, and not
//     under the "dlq." prefix). Retention is interest: a message stays until
//     every subscription has acknowledged it. With interest retention a
//     message published while a topic has no consumer is dropped at once,
//     so EnsureSubscription must run before the first Publish (provisioning
//     does both). Storage is file; Duplicates (the MessageID window) is
//     TopicSpec.DuplicateWindow (server default of 2 minutes when zero).
//   - A subscription is a durable pull consumer on the topic's stream,
//     filtered on the topic subject, with explicit acks, AckWait =
//     LockDuration (30s when zero) and delivery of messages published after
//     it was created (like a new Service Bus subscription). Its name is the
//     subscription name sanitised like a stream name; the original name is
//     kept in the consumer's description.
//   - MessageID travels in the Nats-Msg-Id header (the server drops a
//     repeated ID within the window, and PubAck.Duplicate counts it);
//     Properties are the other headers. Header names starting with "Nats-"
//     or "Datapump-" are reserved, and values may not contain CR or LF or
//     start or end with a space or tab (NATS would alter them).
//   - Publish sends asynchronously (PublishMsgAsync) in chunks and waits for
//     every acknowledgement, so a batch costs about one round trip. When the
//     connection already has its cap of unacknowledged publishes (shared by
//     every caller), a publish waits for a slot, up to 30 s or its context,
//     instead of failing.
//   - Receive pulls with back-to-back Fetch requests of Prefetch messages
//     (30s server-side wait, 5s idle heartbeats) into a pool of Concurrency
//     handlers. It does not use the client's Messages/Consume iterators:
//     under load they can stop issuing pull requests (a race between
//     receiving a request's last message and recording that the request was
//     sent) and stall until a heartbeat is missed. Complete is an ack
//     sent without waiting for the server's confirmation (a lost one is
//     a redelivery after AckWait), Abandon(delay) is NakWithDelay (Nak when
//     zero), RenewLock is InProgress, DeliveryCount is the metadata's
//     NumDelivered. Handlers run on a context that is not cancelled when
//     Receive's context is, so in-flight work can finish and settle during
//     the drain; messages already fetched but not yet handled are released
//     with Nak. A message the server sends into a pull request abandoned at
//     shutdown is redelivered after its lock duration.
//   - JetStream settles by stream sequence, not by delivery: a settle that
//     arrives after the lock expired still applies to the message (a late
//     Complete acknowledges it even if it was redelivered meanwhile), so
//     this adapter never returns bus.ErrLockLost. Handlers must be
//     idempotent anyway; the pump's conditional updates make them so.
//
// # Dead letters and MaxDeliveries
//
// JetStream has no dead-letter queue. The adapter keeps one stream, "DLQ",
// with subjects "dlq.>" and limits retention, created by
// EnsureSubscription. Dead-lettering publishes the original body, MessageID
// and properties, plus the reason, description, delivery count, topic,
// subscription and original stream sequence as Datapump-* headers, to
// subject "dlq.<stream>.<consumer>", and then terminates (Term) the
// original delivery. The publish carries a deterministic Nats-Msg-Id
// derived from the stream, its creation time, the consumer and the stream
// sequence, so dead-lettering the same message twice (a retried settle,
// two processes reacting to the same advisory) stores it once. DeadLetters
// reads that subject with direct gets by sequence, oldest first, without
// consuming anything.
//
// SubscriptionSpec.MaxDeliveries (10 when zero) is enforced by the adapter,
// and the server's MaxDeliver is set one higher. The extra delivery is
// reserved for dead-lettering: when a message's lock expires on its last
// allowed delivery (the handler hung, the process died), the server
// redelivers it once more, and the receive loop dead-letters that delivery
// with bus.ReasonMaxDeliveries without calling the handler. Were MaxDeliver
// equal to MaxDeliveries, the server would give up on such a message on
// its own and only announce it with an advisory, a core NATS message that
// is lost when no process listens at that moment. An Abandon on the last
// allowed delivery dead-letters directly, and a message still in the
// prefetch buffer when Receive stops is dead-lettered rather than naked
// when it is already past the limit. As a further fallback, while Receive
// runs it listens for the consumer's MAX_DELIVERIES advisory (it fires only
// when even the reserved delivery went unsettled, say a process crashed
// while dead-lettering): it reads the message by stream sequence and
// dead-letters it the same way. Such a message stays in the topic's stream
// (the server keeps max-delivered messages for inspection) until the
// consumer is deleted.
//
// # Durability
//
// JetStream acknowledges a publish before the data reaches the disk by
// default (Jepsen, NATS 2.12.1, 2025). EmbeddedConfig.SyncAlways sets the
// embedded server's sync_interval to always, which fsyncs every write. The
// database stays the source of truth either way: a lost message delays an
// item until the rescuer republishes it.
package jetstream
