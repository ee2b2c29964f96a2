package expiry_test

import (
	"context"
	"errors"
	"testing"

	"github.com/orderd/orderd/expiry"
)

func TestServeMuxRouting(t *testing.T) {
	var got string
	mux := expiry.NewServeMux()
	for _, p := range []string{"order_pay:", "order_", "order_pay:vip:", "order_confirm:", "exact"} {
		mux.HandleFunc(p, func(_ context.Context, ev expiry.Event) error { got = p; return nil })
	}
	tests := []struct {
		key     string
		pattern string // "" means no handler
	}{
		{"order_pay:1", "order_pay:"},
		{"order_pay:vip:7", "order_pay:vip:"},
		{"order_pay:", "order_pay:"},
		{"order_confirm:9", "order_confirm:"},
		{"order_other:1", "order_"},
		{"exact", "exact"},
		{"exactly", "exact"},
		{"ord", ""},
		{"", ""},
		{"xorder_pay:1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			got = ""
			err := mux.HandleExpired(context.Background(), expiry.Event{Key: tt.key})
			if tt.pattern == "" {
				if !errors.Is(err, expiry.ErrHandlerNotFound) {
					t.Fatalf("err = %v, want ErrHandlerNotFound", err)
				}
				return
			}
			if err != nil || got != tt.pattern {
				t.Fatalf("routed to %q (err %v), want %q", got, err, tt.pattern)
			}
			if _, p := mux.Handler(tt.key); p != tt.pattern {
				t.Fatalf("Handler(%q) pattern = %q, want %q", tt.key, p, tt.pattern)
			}
		})
	}
}

func TestServeMuxPanics(t *testing.T) {
	h := expiry.HandlerFunc(func(context.Context, expiry.Event) error { return nil })
	tests := map[string]func(*expiry.ServeMux){
		"empty pattern": func(m *expiry.ServeMux) { m.Handle("", h) },
		"nil handler":   func(m *expiry.ServeMux) { m.Handle("a:", nil) },
		"nil func":      func(m *expiry.ServeMux) { m.HandleFunc("a:", nil) },
		"duplicate":     func(m *expiry.ServeMux) { m.Handle("a:", h); m.Handle("a:", h) },
	}
	for name, f := range tests {
		t.Run(name, func(t *testing.T) {
			defer func() {
				v := recover()
				if s, ok := v.(string); !ok || len(s) < 8 || s[:8] != "expiry: " {
					t.Fatalf("recovered %v, want a panic with an \"expiry: \" message", v)
				}
			}()
			f(expiry.NewServeMux())
		})
	}
}

func TestServeMuxMiddlewareOrder(t *testing.T) {
	var trace []string
	mw := func(name string) expiry.Middleware {
		return func(next expiry.Handler) expiry.Handler {
			return expiry.HandlerFunc(func(ctx context.Context, ev expiry.Event) error {
				trace = append(trace, name)
				return next.HandleExpired(ctx, ev)
			})
		}
	}
	mux := expiry.NewServeMux()
	mux.Use(mw("outer"), mw("inner"))
	mux.HandleFunc("k:", func(context.Context, expiry.Event) error { trace = append(trace, "handler"); return nil })
	if err := mux.HandleExpired(context.Background(), expiry.Event{Key: "k:1"}); err != nil {
		t.Fatal(err)
	}
	if want := "outer inner handler"; join(trace) != want {
		t.Fatalf("trace %q, want %q", join(trace), want)
	}
	trace = nil
	_ = mux.HandleExpired(context.Background(), expiry.Event{Key: "none"})
	if len(trace) != 0 {
		t.Fatalf("middleware ran for an unmatched key: %v", trace)
	}
}

func join(s []string) string {
	out := ""
	for i, v := range s {
		if i > 0 {
			out += " "
		}
		out += v
	}
	return out
}
