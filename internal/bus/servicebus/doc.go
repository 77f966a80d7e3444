// Package servicebus is the Azure Service Bus adapter of bus.Bus, on the
// official SDK (azservicebus for messages, azservicebus/admin for
// provisioning). It authenticates with a connection string (the local
// emulator's included) or, given only a namespace, with
// azidentity.DefaultAzureCredential, which is workload identity on AKS.
// SDK types stay inside this package.
//
// # Mapping
//
//   - A topic is a Service Bus topic. EnsureTopic creates it with
//     RequiresDuplicateDetection and TopicSpec.DuplicateWindow as its
//     DuplicateDetectionHistoryTimeWindow (20s to 7 days; zero keeps the
//     broker's 10 minutes), and updates the window of an existing topic.
//     Duplicate detection can only be switched on when a topic is
//     created, so an existing topic without it is an error
//     (ErrNoDuplicateDetection) that tells the operator to re-create it.
//   - A subscription is a topic subscription, received in peek-lock mode.
//     EnsureSubscription sets LockDuration (30s when zero; Service Bus
//     accepts 5s to 5 minutes and a value outside is refused, not
//     clamped), DeadLetteringOnMessageExpiration, and MaxDeliveryCount =
//     MaxDeliveries + 1 (see below). Ensure calls are idempotent: an
//     entity that already has the settings is left alone, one that differs
//     is updated.
//   - A message's ID is its MessageId, the key of duplicate detection; its
//     Body is the AMQP body; its Properties are string application
//     properties. Names starting with "Datapump-" and the broker's
//     DeadLetterReason and DeadLetterErrorDescription are reserved.
//   - Publish sends message batches (NewMessageBatch, SendMessageBatch),
//     starting a new batch when one is full. Service Bus drops a
//     duplicate silently and never tells the sender, so
//     PublishResult.Duplicates is always 0 and Published is the number
//     of messages sent (the conformance suite's UncountedDuplicates).
//   - Receive pulls with ReceiveMessages into a pool of
//     ReceiveOptions.Concurrency handlers, asking for as many messages as
//     there is room for: Concurrency in handlers plus Prefetch waiting for
//     one. Complete is CompleteMessage, DeadLetter is DeadLetterMessage
//     with Reason and ErrorDescription, RenewLock is RenewMessageLock,
//     DeliveryCount is the broker's (1 on the first delivery). A
//     prefetched message whose lock ran out before a handler was free is
//     skipped (the broker redelivers it); messages still prefetched when
//     Receive stops are abandoned.
//   - Lock renewal: the SDK does not renew locks by itself. With
//     ReceiveOptions.RenewEvery, every received message's lock is renewed
//     at that interval from the moment it arrives until it is settled;
//     the renewal stops at settlement.
//   - DeadLetters peeks the subscription's dead-letter sub-queue
//     (SubQueueDeadLetter, PeekMessages), so nothing is removed.
//
// # Abandon with a delay
//
// Service Bus's AbandonMessage has no delay. Abandon(0) is AbandonMessage.
// Abandon(d > 0) keeps the message locked, renewing its lock (every half
// lock duration, or RenewEvery if shorter), and abandons it when d has
// passed. The alternative, scheduling a copy (ScheduleMessages at now+d)
// and completing the original, was rejected: a message scheduled on a
// topic reaches every subscription of the topic, not just the one that
// abandoned it (fixing that needs a SQL filter on every subscription);
// the copy needs another MessageId, or duplicate detection drops it; the
// schedule and the complete are not atomic (the Go SDK has no
// transactions), so a crash between them delivers twice; and the
// broker's DeliveryCount and MaxDeliveryCount would restart with each
// copy. Holding the lock keeps the broker's counting and dead-lettering
// as they are. The costs: a held message still counts as active (KEDA
// sees it), and when Receive stops, or the process dies, held messages
// come back before their delay (at once, or when the lock expires). The
// pump tolerates early redelivery: the control record says when an item
// may be retried.
//
// # MaxDeliveries
//
// The adapter enforces SubscriptionSpec.MaxDeliveries (10 when zero) and
// sets the broker's MaxDeliveryCount one higher. An Abandon on the last
// allowed delivery, or a handler returning unsettled on it, dead-letters
// the message with bus.ReasonMaxDeliveries. When the lock expires on the
// last allowed delivery (a hung handler, a dead process), the broker
// redelivers it once more, and the receive loop dead-letters that reserved
// delivery with bus.ReasonMaxDeliveries without calling the handler. The
// adapter records the delivery count and the time as Datapump-* properties
// when it dead-letters, so DeadLetters reports them exactly. Only if the
// reserved delivery is lost too does the broker dead-letter the message
// itself (reason MaxDeliveryCountExceeded, the same as
// bus.ReasonMaxDeliveries).
//
// # Permissions
//
// EnsureTopic, EnsureSubscription, Ping and Receive (which reads the
// subscription's lock duration and MaxDeliveryCount) use the management
// API, so the identity needs Manage rights (the "Azure Service Bus Data
// Owner" role, or a Manage shared access policy), as KEDA's scaler does.
package servicebus
