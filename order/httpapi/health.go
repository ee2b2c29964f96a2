package httpapi

import (
	"context"
	"net/http"
	"time"
)

// Problems names the parts that fail a health check ("redis", "database",
// "notify", "subscription"), each with a sentence saying what is wrong. Empty
// means healthy.
type Problems map[string]string

// HealthHandler answers a health check: 200 {"status":"ok"}, or 503 with
// "status":"unavailable" and a field per failing part. check gets a context
// that ends after 2 s.
func HealthHandler(check func(context.Context) Problems) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		var p Problems
		if check != nil {
			p = check(ctx)
		}
		if len(p) == 0 {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
			return
		}
		body := map[string]string{"status": "unavailable"}
		for part, why := range p {
			body[part] = why
		}
		writeJSON(w, http.StatusServiceUnavailable, body)
	})
}
