// Package store is the port to a biller shard database: the applications'
// own work-item tables (read only) and the pump's control records, one per
// item, whose conditional transitions are what keep an item from being
// published or delivered twice.
//
// Adapters live in sub-packages (sqlite, postgres) and must all pass the
// conformance suite in storetest.
package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Status is the state of an item's control record.
type Status string

// The control record states. Every transition is a conditional update
// (WHERE status = expected AND version = token), so a stale or duplicate
// request changes nothing.
const (
	StatusNew        Status = "New"
	StatusFetched    Status = "Fetched"
	StatusQueued     Status = "Queued"
	StatusProcessing Status = "Processing"
	StatusProcessed  Status = "Processed"
	StatusFailed     Status = "Failed"
	StatusSkipped    Status = "Skipped"
)

// Statuses lists every status in pipeline order.
var Statuses = []Status{StatusNew, StatusFetched, StatusQueued, StatusProcessing, StatusProcessed, StatusFailed, StatusSkipped}

// Valid reports whether s is a known status.
func (s Status) Valid() bool {
	for _, k := range Statuses {
		if s == k {
			return true
		}
	}
	return false
}

// Terminal reports whether no further transition is expected from s.
func (s Status) Terminal() bool {
	return s == StatusProcessed || s == StatusFailed || s == StatusSkipped
}

// Sentinel errors returned by every adapter.
var (
	// ErrNotFound means the control record (or source row) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrRelatedMissing means the enrichment query found no row: the
	// source item or one of its related rows is missing.
	ErrRelatedMissing = errors.New("related rows missing")
	// ErrUnknownItemType means the item type has no source mapping in this store.
	ErrUnknownItemType = errors.New("unknown item type")
)

// ItemKey identifies a work item within one shard.
type ItemKey struct {
	ItemType string `json:"item_type"`
	ItemID   int64  `json:"item_id"`
}

// String renders the key as "itemType:itemID".
func (k ItemKey) String() string { return fmt.Sprintf("%s:%d", k.ItemType, k.ItemID) }

// Source maps one item type onto the application's own table. Every name is
// a validated SQL identifier (see ValidIdentifier); values never go into SQL
// text.
type Source struct {
	// ItemType is the registry name, e.g. "payment".
	ItemType string
	// Table is the source table, optionally schema-qualified ("dbo.Payments").
	Table string
	// KeyColumn is the integer primary key column.
	KeyColumn string
	// BillerColumn holds the biller id (text).
	BillerColumn string
	// CreatedAtColumn holds the row's insert time; compared with the biller's cut-over.
	CreatedAtColumn string
	// TypeColumn and TypeValue, when set, restrict the table to rows whose
	// TypeColumn equals TypeValue (several item types sharing one table).
	TypeColumn string
	TypeValue  string
	// EnrichQuery selects one row of fields for the CIS payload. It names
	// the item's key with the placeholder :id, which the adapter binds.
	EnrichQuery string
}

var identPart = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// ValidIdentifier reports whether name is a plain SQL identifier, optionally
// qualified with one schema ("schema.table").
func ValidIdentifier(name string) bool {
	if name == "" {
		return false
	}
	parts := 0
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			if !identPart.MatchString(name[start:i]) {
				return false
			}
			parts++
			start = i + 1
		}
	}
	return parts <= 2
}

// Validate checks every identifier of the mapping and names the bad field.
func (s Source) Validate() error {
	if s.ItemType == "" {
		return errors.New("item_type: required")
	}
	check := []struct{ field, v string }{
		{"table", s.Table}, {"key_column", s.KeyColumn}, {"biller_column", s.BillerColumn},
		{"created_at_column", s.CreatedAtColumn},
	}
	if s.TypeColumn != "" {
		check = append(check, struct{ field, v string }{"type_column", s.TypeColumn})
	}
	for _, c := range check {
		if !ValidIdentifier(c.v) {
			return fmt.Errorf("%s: %q is not a valid SQL identifier", c.field, c.v)
		}
	}
	if s.EnrichQuery == "" {
		return errors.New("enrich_query: required")
	}
	if !enrichPlaceholder.MatchString(s.EnrichQuery) {
		return errors.New("enrich_query: must name the item key as :id")
	}
	return nil
}

var enrichPlaceholder = regexp.MustCompile(`(^|[^:A-Za-z0-9_]):id\b`)

// BindEnrichQuery replaces the :id placeholder with the driver's own
// placeholder (for example "?" or "$1").
func BindEnrichQuery(q, placeholder string) string {
	return enrichPlaceholder.ReplaceAllString(q, "${1}"+strings.ReplaceAll(placeholder, "$", "$$"))
}

// Control is one item's control record.
type Control struct {
	ItemKey
	BillerID string `json:"biller"`
	Status   Status `json:"status"`
	// Version is the fencing token: it grows by one on every transition, and
	// every later update of the row names the version it read.
	Version  int64 `json:"version"`
	Attempts int   `json:"attempts"`
	// Owner is the worker that holds the current claim, if any.
	Owner string `json:"owner"`
	// LeaseUntil is when a Processing claim expires (database clock).
	LeaseUntil time.Time `json:"lease_until"`
	// NextAttemptAt, when set, is the earliest time the item may be claimed
	// again after a transient failure (backoff without head-of-line blocking).
	NextAttemptAt time.Time `json:"next_attempt_at"`
	// Origin is "poll" or "direct": which path created the record.
	Origin    string `json:"origin"`
	LastError string `json:"last_error"`
	// SourceCreatedAt is the source row's created-at value, when known.
	SourceCreatedAt time.Time `json:"source_created_at"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
	FetchedAt       time.Time `json:"fetched_at"`
	QueuedAt        time.Time `json:"queued_at"`
	ProcessingAt    time.Time `json:"processing_at"`
	ProcessedAt     time.Time `json:"processed_at"`
	FailedAt        time.Time `json:"failed_at"`
}

// BillerCutover names a biller and the cut-over watermark before which its
// items belong to the old pump.
type BillerCutover struct {
	BillerID  string
	CutoverAt time.Time
}

// PendingCountParams asks for the number of pending items of each biller.
// An item is pending when it has no control record, or its record is New,
// and it was created at or after its biller's cut-over.
//
// The scan of each biller and item type starts at its low watermark, or at
// the cut-over when that is later, so its cost follows what is pending and
// recent, not the history. The low watermark is a created-at below which
// every source row of that biller and item type (at or after the cut-over
// the watermark was computed under) has a control record that is not New.
// A biller whose cut-over moved earlier than that is scanned from its
// cut-over. Nothing in the port writes a New record; a tool that writes one
// for a row below the watermark must follow it with a Full count (with a
// lag) so the watermark comes down to it.
type PendingCountParams struct {
	Billers []BillerCutover
	// Full scans from each biller's cut-over, ignoring the watermarks: the
	// periodic full sweep that finds rows which committed later than
	// WatermarkLag after their created-at.
	Full bool
	// WatermarkLag, when positive, also moves each scanned (biller, item
	// type) watermark, in the same statement, to its oldest pending item's
	// created-at or to WatermarkLag before the database clock, whichever is
	// earlier. The lag is the safety margin for rows that commit after
	// later-created rows (long source transactions, clock skew between the
	// applications and the database); a row that commits later than that
	// is found by the next Full scan. Zero leaves the watermarks as they are.
	WatermarkLag time.Duration
}

// BillerPending is one row of a pending count.
type BillerPending struct {
	BillerID string
	Pending  int64
	// OldestCreatedAt is the created-at of the biller's oldest pending item.
	OldestCreatedAt time.Time
}

// ControlClaimPendingParams claims up to Limit pending items of one biller,
// in one transaction: control records are inserted as Fetched, or moved
// New → Fetched. Items are taken oldest source created-at first, then by
// item type and id, across item types.
//
// The claim considers items created at or after the latest of the cut-over,
// the biller's watermarks (see PendingCountParams) and From.
type ControlClaimPendingParams struct {
	BillerID  string
	CutoverAt time.Time
	// From, when set, is where the claim starts: the oldest pending
	// created-at the publisher saw, or the last claimed created-at of the
	// previous claim for the same announcement. A row committed later
	// below From is seen by the next scan, or, when it is also below the
	// watermark, by the next full one.
	From  time.Time
	Limit int
	Owner string
}

// Claimed is an item the caller now holds, with the version to fence later
// updates.
type Claimed struct {
	ItemKey
	BillerID        string
	Version         int64
	Attempts        int
	SourceCreatedAt time.Time
}

// Fenced names a control record at the version its holder read.
type Fenced struct {
	ItemKey
	Version int64
}

// ControlClaimItemParams claims one item for processing. It succeeds when
// the record is Queued or Fetched (and its NextAttemptAt has passed), or
// Processing with an expired lease; when no record exists and InsertIfAbsent
// is set, it inserts one as Processing (a source that published directly).
type ControlClaimItemParams struct {
	Key            ItemKey
	BillerID       string
	Owner          string
	Lease          time.Duration
	InsertIfAbsent bool
	// Origin is recorded on an inserted record ("direct" or "poll").
	Origin string
}

// ClaimOutcome says what a claim attempt found.
type ClaimOutcome int

// Claim outcomes.
const (
	// ClaimAcquired: the caller holds the item; Claim.Version fences it.
	ClaimAcquired ClaimOutcome = iota + 1
	// ClaimNotYet: the item is waiting out a retry backoff (see RetryAt).
	ClaimNotYet
	// ClaimBusy: another worker holds an unexpired lease.
	ClaimBusy
	// ClaimDone: the item is already Processed, Failed or Skipped.
	ClaimDone
	// ClaimAbsent: no control record and InsertIfAbsent was false, or the
	// record is New (not yet fetched by a biller consumer).
	ClaimAbsent
)

// String names the outcome.
func (o ClaimOutcome) String() string {
	switch o {
	case ClaimAcquired:
		return "acquired"
	case ClaimNotYet:
		return "not-yet"
	case ClaimBusy:
		return "busy"
	case ClaimDone:
		return "done"
	case ClaimAbsent:
		return "absent"
	}
	return "unknown"
}

// ItemClaim is the result of ControlClaimItem.
type ItemClaim struct {
	Outcome ClaimOutcome
	// Control is the record as it stands after the attempt (for
	// ClaimAcquired, the new Processing record with its Version).
	Control Control
	// RetryAt is set for ClaimNotYet and ClaimBusy: when trying again may succeed.
	RetryAt time.Time
}

// ItemClaimResult is one item's result of ControlClaimBatch: the claim, or
// the error that concerns this item alone (its source row is not visible
// yet, its item type is unknown, …).
type ItemClaimResult struct {
	ItemClaim
	Err error
}

// EnrichResult is one item's result of ItemEnrichBatch: its enrichment row
// by column name, or the error ItemEnrich would return for it.
type EnrichResult struct {
	Row map[string]any
	Err error
}

// ControlFinishParams ends a Processing claim: Processed, or Failed with an error.
type ControlFinishParams struct {
	Fenced
	Status Status // StatusProcessed or StatusFailed
	Error  string
}

// Validate checks that the claim ends as Processed or Failed; the adapters
// refuse any other status before they change anything.
func (p ControlFinishParams) Validate() error {
	if p.Status != StatusProcessed && p.Status != StatusFailed {
		return fmt.Errorf("finish %s: status: %q is not Processed or Failed", p.ItemKey, p.Status)
	}
	return nil
}

// ControlReleaseParams hands a Processing item back after a transient
// failure: Processing → Queued, attempts+1, NextAttemptAt = now + RetryIn.
type ControlReleaseParams struct {
	Fenced
	Error   string
	RetryIn time.Duration
}

// ControlListStuckParams lists Fetched or Queued records that have not
// changed for longer than OlderThan (by the database clock), oldest first,
// and whose NextAttemptAt (if any) has passed.
type ControlListStuckParams struct {
	OlderThan time.Duration
	Limit     int
}

// ControlReclaimExpiredParams moves Processing records whose lease has
// expired back to Queued (attempts+1, owner cleared, last error "lease of
// <owner> expired"), and returns them.
type ControlReclaimExpiredParams struct {
	Limit int
}

// ControlListParams filters control records for operators.
type ControlListParams struct {
	BillerID string
	ItemType string
	Statuses []Status
	Limit    int
}

// ControlRetryParams filters the Failed records to retry. Empty fields do
// not filter; Keys, when set, limits the retry to those items. Records are
// taken oldest failure first; a zero Limit means no limit.
type ControlRetryParams struct {
	BillerID string
	ItemType string
	// FailedFrom and FailedTo bound failed_at (inclusive, exclusive); zero is open.
	FailedFrom time.Time
	FailedTo   time.Time
	Keys       []ItemKey
	Limit      int
	DryRun     bool
}

// PendingListParams asks for pending items old enough to have been
// announced. A zero Limit means the adapter's default.
//
// Like PendingCount, the scan starts at each biller's watermark, or at the
// cut-over when that is later. A row that committed late below the
// watermark is listed once a Full PendingCount with a WatermarkLag has
// moved the watermark back down to it.
type PendingListParams struct {
	Billers   []BillerCutover
	OlderThan time.Duration
	Limit     int
}

// ControlCountParams says which control records ControlCountByStatus
// counts.
type ControlCountParams struct {
	// WithProcessed also counts Processed records. They are the history,
	// every item ever delivered, so the count reads the whole table: only
	// operators ask for it (datapump status). Without it every other status
	// is counted from an index of the records that are not Processed, whose
	// size follows the backlog and operators' actions, not the history.
	WithProcessed bool
}

// StatusCount is a count of control records of one biller in one status.
type StatusCount struct {
	BillerID string
	Status   Status
	Count    int64
}

// Store is one shard database.
type Store interface {
	// Migrate creates or upgrades the control tables. It never touches
	// source tables and is safe to run again.
	Migrate(ctx context.Context) error
	// Ping checks the database is reachable.
	Ping(ctx context.Context) error
	// Close releases the connections.
	Close() error

	// PendingCount counts pending items per biller with one grouped query.
	PendingCount(ctx context.Context, p PendingCountParams) ([]BillerPending, error)
	// ControlClaimPending atomically claims pending items of one biller (see
	// ControlClaimPendingParams). Concurrent callers never claim one item twice.
	ControlClaimPending(ctx context.Context, p ControlClaimPendingParams) ([]Claimed, error)
	// ControlMarkQueued moves each record Fetched → Queued (owner cleared)
	// if it is still Fetched at the given version; it returns how many moved.
	ControlMarkQueued(ctx context.Context, items []Fenced) (int, error)
	// ControlClaimItem claims one item for processing (see ControlClaimItemParams).
	ControlClaimItem(ctx context.Context, p ControlClaimItemParams) (ItemClaim, error)
	// ControlClaimBatch claims several items at once, each exactly as
	// ControlClaimItem would; one result per params, in order.
	ControlClaimBatch(ctx context.Context, ps []ControlClaimItemParams) ([]ItemClaimResult, error)
	// ControlExtendLease pushes the lease of a Processing record forward;
	// false means the caller no longer holds it.
	ControlExtendLease(ctx context.Context, f Fenced, lease time.Duration) (bool, error)
	// ControlFinish ends a claim; false means the caller no longer held it
	// (its lease was taken over) and nothing changed.
	ControlFinish(ctx context.Context, p ControlFinishParams) (bool, error)
	// ControlFinishBatch ends several claims at once, each exactly as
	// ControlFinish would; ok[i] is ControlFinish's result for ps[i]. An
	// invalid status in any of them fails the call and changes nothing.
	ControlFinishBatch(ctx context.Context, ps []ControlFinishParams) (ok []bool, err error)
	// ControlRelease returns a claim for a later retry; false as for ControlFinish.
	ControlRelease(ctx context.Context, p ControlReleaseParams) (bool, error)
	// ControlSkip marks a not-yet-processing record Skipped (its biller was
	// switched off); false if it was not Fetched, Queued or New.
	ControlSkip(ctx context.Context, key ItemKey, reason string) (bool, error)

	// ControlListStuck lists Fetched/Queued records that are overdue and
	// bumps their updated-at, so the next call does not return them again
	// until OlderThan has passed once more; it returns them as they are
	// after the bump.
	ControlListStuck(ctx context.Context, p ControlListStuckParams) ([]Control, error)
	// ControlReclaimExpired returns expired Processing leases to Queued.
	ControlReclaimExpired(ctx context.Context, p ControlReclaimExpiredParams) ([]Control, error)

	// ControlGet reads one control record; ErrNotFound if absent.
	ControlGet(ctx context.Context, key ItemKey) (Control, error)
	// ControlList lists control records for operators, newest first (by
	// created-at, then item type, then id, all descending).
	ControlList(ctx context.Context, p ControlListParams) ([]Control, error)
	// ControlCountByStatus counts records per biller and status, one row
	// for each pair that has records, ordered by biller and then by the
	// status's place in Statuses; Processed records only WithProcessed.
	ControlCountByStatus(ctx context.Context, p ControlCountParams) ([]StatusCount, error)
	// ControlRetry moves Failed records matching the filter back to Queued
	// (attempts reset to 0, next attempt now, version+1, last error kept)
	// and returns them as they are after the move; with DryRun it changes
	// nothing and returns the records that would move.
	ControlRetry(ctx context.Context, p ControlRetryParams) ([]Control, error)
	// PendingList lists pending items (no control record, or New) of the
	// given billers created at or after their cut-over and at least
	// OlderThan ago by the database clock, oldest first: the reconcile
	// sweep of direct billers, whose sources should have announced them.
	PendingList(ctx context.Context, p PendingListParams) ([]SourceRow, error)

	// ItemEnrich runs the item type's enrichment query for one item and
	// returns its columns by name; ErrRelatedMissing if it finds no row.
	ItemEnrich(ctx context.Context, key ItemKey) (map[string]any, error)
	// ItemEnrichBatch enriches several items at once; one result per key,
	// in order, each what ItemEnrich returns for it.
	ItemEnrichBatch(ctx context.Context, keys []ItemKey) ([]EnrichResult, error)
	// ItemSource reads the biller and created-at of one source row;
	// ErrNotFound if the row does not exist.
	ItemSource(ctx context.Context, key ItemKey) (SourceRow, error)
	// Now reads the database clock.
	Now(ctx context.Context) (time.Time, error)
}

// SourceRow is what the store knows of a source row without enriching it.
type SourceRow struct {
	ItemKey
	BillerID  string
	CreatedAt time.Time
}

// DemoItem is one work item the demo (and the tests) write into the demo
// source schema, with its related account row.
type DemoItem struct {
	ItemType string // "payment" or "paperless"
	// ItemID, when non-zero, is used as the key; otherwise the database assigns one.
	ItemID    int64
	BillerID  string
	AccountID int64 // when zero, an account is created for the item
	// SkipAccount leaves the related account row missing (to test enrichment failures).
	SkipAccount bool
	AmountCents int64
	Email       string
	CreatedAt   time.Time // zero: the database clock
}

// DemoSource is implemented by adapters that can create and fill the demo
// source schema (payments, paperless registrations and their accounts). It
// stands in for the applications that own these tables.
type DemoSource interface {
	// DemoSchemaCreate creates the demo source tables if they are missing.
	DemoSchemaCreate(ctx context.Context) error
	// DemoItemsInsert inserts the items (and accounts) in one transaction and
	// returns their keys in order.
	DemoItemsInsert(ctx context.Context, items []DemoItem) ([]ItemKey, error)
}

// Leaser grants a named, time-limited lease to one owner at a time,
// by the database clock (the publisher's leader election).
type Leaser interface {
	// LeaseAcquire takes or renews the lease for owner. It returns true while
	// owner holds it.
	LeaseAcquire(ctx context.Context, name, owner string, ttl time.Duration) (bool, error)
	// LeaseRelease gives the lease up if owner holds it.
	LeaseRelease(ctx context.Context, name, owner string) error
}
