package expiry

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// ServeMux routes an Event to the handler whose pattern matches its Key: an
// exact match first, then the longest pattern that is a prefix of the key.
// A ServeMux is itself a Handler. It is safe for concurrent use.
type ServeMux struct {
	mu       sync.RWMutex
	exact    map[string]Handler
	prefixes []muxEntry // longest first
	mws      []Middleware
}

type muxEntry struct {
	pattern string
	h       Handler
}

// NewServeMux returns an empty ServeMux.
func NewServeMux() *ServeMux { return &ServeMux{exact: make(map[string]Handler)} }

// Handle registers h for pattern. Every registered pattern matches the key
// equal to it and, as a prefix, every key that starts with it. It panics on an
// empty pattern, a nil handler or a pattern registered twice.
func (mux *ServeMux) Handle(pattern string, h Handler) {
	mux.mu.Lock()
	defer mux.mu.Unlock()
	if pattern == "" {
		panic("expiry: empty pattern")
	}
	if h == nil {
		panic("expiry: nil handler for pattern " + pattern)
	}
	if _, dup := mux.exact[pattern]; dup {
		panic("expiry: multiple registrations for " + pattern)
	}
	mux.exact[pattern] = h
	mux.prefixes = append(mux.prefixes, muxEntry{pattern, h})
	sort.SliceStable(mux.prefixes, func(i, j int) bool {
		return len(mux.prefixes[i].pattern) > len(mux.prefixes[j].pattern)
	})
}

// HandleFunc registers f for pattern; see Handle.
func (mux *ServeMux) HandleFunc(pattern string, f func(context.Context, Event) error) {
	if f == nil {
		panic("expiry: nil handler for pattern " + pattern)
	}
	mux.Handle(pattern, HandlerFunc(f))
}

// Use appends middleware applied, in order (the first outermost), around the
// handler that a key is routed to.
func (mux *ServeMux) Use(mws ...Middleware) {
	mux.mu.Lock()
	defer mux.mu.Unlock()
	mux.mws = append(mux.mws, mws...)
}

// Handler returns the handler for key and the pattern that matched, or nil and
// "" when none matches.
func (mux *ServeMux) Handler(key string) (h Handler, pattern string) {
	mux.mu.RLock()
	defer mux.mu.RUnlock()
	if h, ok := mux.exact[key]; ok {
		return h, key
	}
	for _, e := range mux.prefixes {
		if strings.HasPrefix(key, e.pattern) {
			return e.h, e.pattern
		}
	}
	return nil, ""
}

// HandleExpired dispatches ev to the matching handler, wrapped in the mux's
// middleware. A key that matches no pattern returns an error wrapping
// ErrHandlerNotFound.
func (mux *ServeMux) HandleExpired(ctx context.Context, ev Event) error {
	h, _ := mux.Handler(ev.Key)
	if h == nil {
		return fmt.Errorf("%w %q", ErrHandlerNotFound, ev.Key)
	}
	mux.mu.RLock()
	for i := len(mux.mws) - 1; i >= 0; i-- {
		h = mux.mws[i](h)
	}
	mux.mu.RUnlock()
	return h.HandleExpired(ctx, ev)
}
