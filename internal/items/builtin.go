package items

import (
	"fmt"
	"strconv"
	"time"

	"github.com/datapump/datapump/internal/store"
)

// Names and topics of the built-in item types.
const (
	Payment                = "payment"
	Paperless              = "paperless"
	PaymentTopic           = "data-pump-payment-created"
	PaperlessTopic         = "data-pump-paperless-registration-created"
	BillerTopic            = "data-pump-data-created"
	paymentEnrichQuery     = `SELECT p.id AS item_id, p.biller_id, p.amount_cents, p.currency, p.created_at, a.account_number, a.customer_name FROM payments p JOIN accounts a ON a.id = p.account_id WHERE p.id = :id`
	paperlessEnrichQuery   = `SELECT r.id AS item_id, r.biller_id, r.email, r.enrolled, r.created_at, a.account_number, a.customer_name FROM paperless_registrations r JOIN accounts a ON a.id = r.account_id WHERE r.id = :id`
	defaultCreatedAtColumn = "created_at"
)

// Builtin returns the built-in item types, mapped onto the demo schema
// (tables payments, paperless_registrations and accounts).
func Builtin() []Type {
	return []Type{
		{
			Name:    Payment,
			Topic:   PaymentTopic,
			CISPath: "/payments",
			Map:     MapPayment,
			Source: store.Source{
				ItemType: Payment, Table: "payments", KeyColumn: "id", BillerColumn: "biller_id",
				CreatedAtColumn: defaultCreatedAtColumn, EnrichQuery: paymentEnrichQuery,
			},
		},
		{
			Name:    Paperless,
			Topic:   PaperlessTopic,
			CISPath: "/paperless-registrations",
			Map:     MapPaperless,
			Source: store.Source{
				ItemType: Paperless, Table: "paperless_registrations", KeyColumn: "id", BillerColumn: "biller_id",
				CreatedAtColumn: defaultCreatedAtColumn, EnrichQuery: paperlessEnrichQuery,
			},
		},
	}
}

// Mappings lists the mapping functions a configured item type may name.
var Mappings = map[string]MapFunc{
	"payment":     MapPayment,
	"paperless":   MapPaperless,
	"passthrough": MapPassthrough,
}

// PaymentPayload is what the CIS receives for a payment.
type PaymentPayload struct {
	PaymentID     int64  `json:"paymentId"`
	BillerID      string `json:"billerId"`
	AccountNumber string `json:"accountNumber"`
	CustomerName  string `json:"customerName"`
	AmountCents   int64  `json:"amountCents"`
	Currency      string `json:"currency"`
}

// MapPayment maps a payment enrichment row.
func MapPayment(row map[string]any) (any, error) {
	var p PaymentPayload
	var err error
	if p.PaymentID, err = intField(row, "item_id"); err != nil {
		return nil, err
	}
	if p.AmountCents, err = intField(row, "amount_cents"); err != nil {
		return nil, err
	}
	if p.AmountCents <= 0 {
		return nil, fmt.Errorf("amount_cents: %d is not a positive amount", p.AmountCents)
	}
	if p.BillerID, err = stringField(row, "biller_id"); err != nil {
		return nil, err
	}
	if p.AccountNumber, err = stringField(row, "account_number"); err != nil {
		return nil, err
	}
	if p.Currency, err = stringField(row, "currency"); err != nil {
		return nil, err
	}
	p.CustomerName, _ = stringField(row, "customer_name")
	return p, nil
}

// PaperlessPayload is what the CIS receives for a paperless registration.
type PaperlessPayload struct {
	RegistrationID int64  `json:"registrationId"`
	BillerID       string `json:"billerId"`
	AccountNumber  string `json:"accountNumber"`
	CustomerName   string `json:"customerName"`
	Email          string `json:"email"`
	Enrolled       bool   `json:"enrolled"`
}

// MapPaperless maps a paperless registration enrichment row.
func MapPaperless(row map[string]any) (any, error) {
	var p PaperlessPayload
	var err error
	if p.RegistrationID, err = intField(row, "item_id"); err != nil {
		return nil, err
	}
	if p.BillerID, err = stringField(row, "biller_id"); err != nil {
		return nil, err
	}
	if p.AccountNumber, err = stringField(row, "account_number"); err != nil {
		return nil, err
	}
	if p.Email, err = stringField(row, "email"); err != nil {
		return nil, err
	}
	enrolled, err := intField(row, "enrolled")
	if err != nil {
		return nil, err
	}
	p.Enrolled = enrolled != 0
	p.CustomerName, _ = stringField(row, "customer_name")
	return p, nil
}

// MapPassthrough sends the enrichment row as it is, times in RFC 3339.
func MapPassthrough(row map[string]any) (any, error) {
	out := make(map[string]any, len(row))
	for k, v := range row {
		switch x := v.(type) {
		case []byte:
			out[k] = string(x)
		case time.Time:
			out[k] = x.UTC().Format(time.RFC3339Nano)
		default:
			out[k] = v
		}
	}
	return out, nil
}

func intField(row map[string]any, name string) (int64, error) {
	v, ok := row[name]
	if !ok || v == nil {
		return 0, fmt.Errorf("%s: missing", name)
	}
	switch x := v.(type) {
	case int64:
		return x, nil
	case int32:
		return int64(x), nil
	case int:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case bool:
		if x {
			return 1, nil
		}
		return 0, nil
	case float64:
		return int64(x), nil
	case []byte:
		return parseInt(name, string(x))
	case string:
		return parseInt(name, x)
	}
	return 0, fmt.Errorf("%s: unexpected type %T", name, v)
}

func parseInt(name, s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not an integer", name, s)
	}
	return n, nil
}

func stringField(row map[string]any, name string) (string, error) {
	v, ok := row[name]
	if !ok || v == nil {
		return "", fmt.Errorf("%s: missing", name)
	}
	switch x := v.(type) {
	case string:
		if x == "" {
			return "", fmt.Errorf("%s: empty", name)
		}
		return x, nil
	case []byte:
		if len(x) == 0 {
			return "", fmt.Errorf("%s: empty", name)
		}
		return string(x), nil
	}
	return fmt.Sprint(v), nil
}
