package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/orderd/orderd/order"
)

// maxBody bounds a request body.
const maxBody = 64 << 10

// jsonTime is a time in RFC 3339, UTC, with milliseconds.
type jsonTime time.Time

func (t jsonTime) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Time(t).UTC().Format("2006-01-02T15:04:05.000Z07:00") + `"`), nil
}

func optTime(t *time.Time) *jsonTime {
	if t == nil {
		return nil
	}
	j := jsonTime(*t)
	return &j
}

type orderJSON struct {
	ID              int64     `json:"id"`
	UserID          int64     `json:"user_id"`
	SKU             int64     `json:"sku"`
	Qty             int64     `json:"qty"`
	AmountCents     int64     `json:"amount_cents"`
	Status          string    `json:"status"`
	CreatedAt       jsonTime  `json:"created_at"`
	PayDeadline     jsonTime  `json:"pay_deadline"`
	PaidAt          *jsonTime `json:"paid_at"`
	CancelledAt     *jsonTime `json:"cancelled_at"`
	ShippedAt       *jsonTime `json:"shipped_at"`
	ConfirmDeadline *jsonTime `json:"confirm_deadline"`
	CompletedAt     *jsonTime `json:"completed_at"`
	AutoConfirmed   bool      `json:"auto_confirmed"`
}

func toOrderJSON(o order.Order) orderJSON {
	return orderJSON{
		ID: o.ID, UserID: o.UserID, SKU: o.SKU, Qty: o.Qty, AmountCents: o.AmountCents,
		Status: string(o.Status), CreatedAt: jsonTime(o.CreatedAt), PayDeadline: jsonTime(o.PayDeadline),
		PaidAt: optTime(o.PaidAt), CancelledAt: optTime(o.CancelledAt), ShippedAt: optTime(o.ShippedAt),
		ConfirmDeadline: optTime(o.ConfirmDeadline), CompletedAt: optTime(o.CompletedAt),
		AutoConfirmed: o.AutoConfirmed,
	}
}

type skuJSON struct {
	SKU          int64  `json:"sku"`
	Name         string `json:"name"`
	PriceCents   int64  `json:"price_cents"`
	Available    int64  `json:"available"`
	LimitPerUser int64  `json:"limit_per_user"`
}

func toSKUJSON(k order.SKU) skuJSON { return skuJSON(k) }

type errorJSON struct {
	Error   string `json:"error"`
	Message string `json:"message"`
	Status  string `json:"status,omitempty"`
}

// decode reads exactly one JSON object into v: no unknown fields, nothing
// after it, at most maxBody bytes.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return order.Errorf(order.CodeInvalidRequest, "bad JSON body: %s", describeJSONError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return order.Errorf(order.CodeInvalidRequest, "bad JSON body: data after the object")
	}
	return nil
}

func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var big *http.MaxBytesError
	switch {
	case errors.As(err, &big):
		return fmt.Sprintf("body larger than %d bytes", big.Limit)
	case errors.As(err, &syn):
		return fmt.Sprintf("syntax error at byte %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q must be %s", typ.Field, typ.Type)
	case errors.Is(err, io.EOF):
		return "empty body"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of body"
	}
	return err.Error()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// MarshalOrder returns o in the API's JSON form, as GET /v1/orders/{id}
// answers it: for the command line and the console to print it the same way.
func MarshalOrder(o order.Order) ([]byte, error) { return json.Marshal(toOrderJSON(o)) }
