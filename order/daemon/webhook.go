package daemon

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/orderd/orderd/expiry"
)

// WebhookConfig configures a webhook timer: the shop's app moves its
// records, told by a signed POST.
type WebhookConfig struct {
	Name   string // the timer's name, in every POST
	Prefix string // its keys' prefix after the key prefix
	URL    string
	Secret []byte
	// Timeout bounds each POST. If zero, 5 s is used.
	Timeout time.Duration
	// MaxAttempts bounds the attempts at a timer: after that many failed
	// POSTs it goes to the dead set (the listener's MaxAttempts must be at
	// least as high). If zero, 10 is used.
	MaxAttempts int
	// BatchMax bounds the ids of one POST. If zero, the daemon's Batch.Max.
	BatchMax int
	// Overdue, if set, returns up to limit overdue ids, oldest first: the
	// sweep POSTs them.
	Overdue func(ctx context.Context, limit int) ([]string, error)
	// Client sends the POSTs. If nil, http.DefaultClient.
	Client *http.Client
}

// SignatureHeader is the header of a webhook POST holding
// "sha256=<hex of HMAC-SHA256(secret, body)>".
const SignatureHeader = "X-Orderd-Signature"

// WebhookTimer returns a Timer that POSTs each batch of expired ids to the
// shop's app: Content-Type application/json, the body
// {"timer":"<name>","ids":["17","42"],"attempt":1}, signed in
// SignatureHeader. A 2xx answer means every id is done; anything else, or
// no answer within Timeout, fails the batch: its timers are set due again
// by the listener (in the due index: a restart loses nothing), with
// backoff, and after MaxAttempts they go to the dead set.
func WebhookTimer(cfg WebhookConfig) Timer {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.Client == nil {
		cfg.Client = http.DefaultClient
	}
	return &webhook{cfg: cfg}
}

type webhook struct{ cfg WebhookConfig }

func (w *webhook) Name() string     { return w.cfg.Name }
func (w *webhook) Prefix() string   { return w.cfg.Prefix }
func (w *webhook) BatchMax() int    { return w.cfg.BatchMax }
func (w *webhook) MaxAttempts() int { return w.cfg.MaxAttempts }

func (w *webhook) CheckID(id string) error {
	if id == "" {
		return fmt.Errorf("empty id: %w", expiry.ErrMalformedKey)
	}
	return nil
}

// webhookBody is a POST's body.
type webhookBody struct {
	Timer   string   `json:"timer"`
	IDs     []string `json:"ids"`
	Attempt int      `json:"attempt"`
}

func (w *webhook) Apply(ctx context.Context, ids []string, _ string) (Applied, error) {
	if err := w.post(ctx, ids, Attempt(ctx)); err != nil {
		// Retried from the due index, with backoff: not again at once.
		return Applied{}, fmt.Errorf("%w: %w", err, expiry.SkipRetry)
	}
	return Applied{Moved: len(ids)}, nil
}

// post sends one batch and reports whether the app took it (2xx).
func (w *webhook) post(ctx context.Context, ids []string, attempt int) error {
	body, err := json.Marshal(webhookBody{Timer: w.cfg.Name, IDs: ids, Attempt: attempt})
	if err != nil {
		return err
	}
	mac := hmac.New(sha256.New, w.cfg.Secret)
	mac.Write(body)
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("timer %s: webhook: %w", w.cfg.Name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SignatureHeader, "sha256="+hex.EncodeToString(mac.Sum(nil)))
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("timer %s: webhook: %w", w.cfg.Name, err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("timer %s: webhook answered %s: %q", w.cfg.Name, resp.Status, snippet)
	}
	return nil
}

// Sweep POSTs the overdue ids, page by page (BatchMax at a time), until a
// page is short or the app leaves a page as it was (the same ids again).
func (w *webhook) Sweep(ctx context.Context, _ time.Duration, _ func(string) bool) (int, error) {
	if w.cfg.Overdue == nil {
		return 0, nil
	}
	page := max(w.cfg.BatchMax, 1)
	moved := 0
	var last []string
	for ctx.Err() == nil {
		ids, err := w.cfg.Overdue(ctx, page)
		if err != nil || len(ids) == 0 || slices.Equal(ids, last) {
			return moved, err
		}
		if err := w.post(context.WithoutCancel(ctx), ids, 1); err != nil {
			return moved, err
		}
		moved += len(ids)
		if len(ids) < page {
			return moved, nil
		}
		last = ids
	}
	return moved, ctx.Err()
}
