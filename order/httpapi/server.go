// Package httpapi serves the order HTTP API on the order service: JSON in and
// out, HS256 bearer tokens, one place that maps service errors to HTTP. The
// API is documented by openapi.yaml beside this file (OpenAPI returns it;
// the server serves it at GET /openapi.yaml), and the tests hold the server
// to it.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/orderd/orderd/order"
)

// Config configures the API handler.
type Config struct {
	// JWTSecret verifies bearer tokens. It must not be empty.
	JWTSecret []byte
	// Logger receives one line per request. If nil, nothing is logged.
	Logger *zap.Logger
	// Registry receives the request metrics and is served on /metrics.
	// If nil, a new registry is used.
	Registry *prometheus.Registry
	// RequestTimeout bounds the time a request may wait for the database
	// and Redis: a request they do not answer in time gets 503
	// unavailable. If zero, 5 s is used.
	RequestTimeout time.Duration
	// Health reports what keeps the API from working (Redis or the
	// database not answering). If nil, /healthz always answers 200.
	Health func(context.Context) Problems
}

type server struct {
	svc      *order.Service
	secret   []byte
	log      *zap.Logger
	health   func(context.Context) Problems
	timeout  time.Duration
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New returns the API handler over svc.
func New(svc *order.Service, cfg Config) (http.Handler, error) {
	if len(cfg.JWTSecret) == 0 {
		return nil, errors.New("httpapi: a JWT secret is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	s := &server{svc: svc, secret: cfg.JWTSecret, log: cfg.Logger, health: cfg.Health, timeout: cfg.RequestTimeout,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orderd_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "orderd_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"route"}),
	}
	if err := cfg.Registry.Register(s.requests); err != nil {
		return nil, err
	}
	if err := cfg.Registry.Register(s.latency); err != nil {
		return nil, err
	}

	handlers := map[string]http.Handler{
		"PUT /v1/skus/{sku}":          s.auth(true, s.putSKU),
		"GET /v1/skus/{sku}":          s.wrap(s.getSKU),
		"GET /v1/skus":                s.wrap(s.listSKUs),
		"POST /v1/orders":             s.auth(false, s.createOrder),
		"GET /v1/orders/{id}":         s.auth(false, s.getOrder),
		"GET /v1/orders":              s.auth(false, s.listOrders),
		"POST /v1/orders/{id}/pay":    s.auth(false, s.act(svc.Pay)),
		"POST /v1/orders/{id}/cancel": s.auth(false, s.act(svc.Cancel)),
		"POST /v1/orders/{id}/ship": s.auth(true, s.act(func(ctx context.Context, _, id int64) (order.Order, error) {
			return svc.Ship(ctx, id) // admins ship any order
		})),
		"POST /v1/orders/{id}/confirm":  s.auth(false, s.act(svc.Confirm)),
		"POST /v1/orders/{id}/deadline": s.auth(true, s.moveDeadline),
		"POST /v1/orders/{id}/expire": s.auth(true, s.act(func(ctx context.Context, _, id int64) (order.Order, error) {
			return svc.ExpireNow(ctx, id) // admins expire any pending order
		})),
		"GET /healthz":      HealthHandler(s.health),
		"GET /metrics":      promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}),
		"GET /openapi.yaml": http.HandlerFunc(serveOpenAPI),
	}
	mux := http.NewServeMux()
	for _, pattern := range routes {
		mux.Handle(pattern, handlers[pattern])
		delete(handlers, pattern)
	}
	if len(handlers) > 0 {
		panic(fmt.Sprintf("httpapi: handlers without a route: %v", handlers))
	}
	mux.HandleFunc("/", s.wrap(func(w http.ResponseWriter, r *http.Request) (any, int, error) {
		if allow := allowed(mux, r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			return nil, 0, order.Errorf(order.CodeMethodNotAllowed, "%s is not allowed here; use %s", r.Method, strings.Join(allow, " or "))
		}
		return nil, 0, order.Errorf(order.CodeNotFound, "no such endpoint")
	}))
	return s.observe(mux), nil
}

// allowed returns the methods that mux serves r's path with (other than by
// its catch-all pattern "/").
func allowed(mux *http.ServeMux, r *http.Request) []string {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := *r
		probe.Method = m
		if _, pattern := mux.Handler(&probe); pattern != "" && pattern != "/" {
			allow = append(allow, m)
		}
	}
	return allow
}

// handlerFunc returns the response body and status, or an error.
type handlerFunc func(w http.ResponseWriter, r *http.Request) (any, int, error)

// authedFunc is a handlerFunc for a caller with a valid token.
type authedFunc func(w http.ResponseWriter, r *http.Request, id identity) (any, int, error)

// statusOf maps service error codes to HTTP: the one place that does.
var statusOf = map[string]int{
	order.CodeInvalidRequest:    http.StatusBadRequest,
	order.CodeUnauthorized:      http.StatusUnauthorized,
	order.CodeForbidden:         http.StatusForbidden,
	order.CodeNotFound:          http.StatusNotFound,
	order.CodeSoldOut:           http.StatusConflict,
	order.CodeLimitExceeded:     http.StatusConflict,
	order.CodeInvalidTransition: http.StatusConflict,
	order.CodeUnavailable:       http.StatusServiceUnavailable,
	order.CodeMethodNotAllowed:  http.StatusMethodNotAllowed,
}

func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var oe *order.Error
	if !errors.As(err, &oe) {
		// Not the caller's fault: the database or Redis failed. The detail
		// goes to the log, not to the client.
		s.log.Error("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		oe = &order.Error{Code: order.CodeUnavailable, Message: "the service cannot answer right now; try again"}
	}
	status, ok := statusOf[oe.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, errorJSON{Error: oe.Code, Message: oe.Message, Status: string(oe.Status)})
}

func (s *server) wrap(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, status, err := h(w, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, status, body)
	}
}

// auth checks the bearer token (and admin rights when admin) before h.
func (s *server) auth(admin bool, h authedFunc) http.HandlerFunc {
	return s.wrap(func(w http.ResponseWriter, r *http.Request) (any, int, error) {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || raw == "" {
			return nil, 0, order.Errorf(order.CodeUnauthorized, "missing bearer token")
		}
		id, err := parseToken(s.secret, strings.TrimSpace(raw))
		if err != nil {
			return nil, 0, order.Errorf(order.CodeUnauthorized, "invalid token: %v", err)
		}
		if admin && !id.admin {
			return nil, 0, order.Errorf(order.CodeForbidden, "admins only")
		}
		return h(w, r, id)
	})
}

func pathID(r *http.Request, name string) (int64, error) {
	v := r.PathValue(name)
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, order.Errorf(order.CodeInvalidRequest, "%s must be a positive integer, not %q", name, v)
	}
	return id, nil
}

type putSKURequest struct {
	Name         *string `json:"name"`
	PriceCents   *int64  `json:"price_cents"`
	Stock        *int64  `json:"stock"`
	LimitPerUser int64   `json:"limit_per_user"`
}

func (s *server) putSKU(w http.ResponseWriter, r *http.Request, _ identity) (any, int, error) {
	sku, err := pathID(r, "sku")
	if err != nil {
		return nil, 0, err
	}
	var req putSKURequest
	if err := decode(w, r, &req); err != nil {
		return nil, 0, err
	}
	if req.Name == nil || req.PriceCents == nil || req.Stock == nil {
		return nil, 0, order.Errorf(order.CodeInvalidRequest, "name, price_cents and stock are required")
	}
	k, err := s.svc.PutSKU(r.Context(), order.SKU{SKU: sku, Name: *req.Name, PriceCents: *req.PriceCents,
		Available: *req.Stock, LimitPerUser: req.LimitPerUser})
	if err != nil {
		return nil, 0, err
	}
	return toSKUJSON(k), http.StatusOK, nil
}

func (s *server) getSKU(w http.ResponseWriter, r *http.Request) (any, int, error) {
	sku, err := pathID(r, "sku")
	if err != nil {
		return nil, 0, err
	}
	k, err := s.svc.GetSKU(r.Context(), sku)
	if err != nil {
		return nil, 0, err
	}
	return toSKUJSON(k), http.StatusOK, nil
}

func (s *server) listSKUs(w http.ResponseWriter, r *http.Request) (any, int, error) {
	list, err := s.svc.ListSKUs(r.Context())
	if err != nil {
		return nil, 0, err
	}
	out := make([]skuJSON, len(list))
	for i, k := range list {
		out[i] = toSKUJSON(k)
	}
	return map[string]any{"skus": out}, http.StatusOK, nil
}

type createOrderRequest struct {
	SKU int64 `json:"sku"`
	Qty int64 `json:"qty"`
}

func (s *server) createOrder(w http.ResponseWriter, r *http.Request, id identity) (any, int, error) {
	var req createOrderRequest
	if err := decode(w, r, &req); err != nil {
		return nil, 0, err
	}
	o, err := s.svc.Create(r.Context(), id.user, req.SKU, req.Qty)
	if err != nil {
		return nil, 0, err
	}
	return toOrderJSON(o), http.StatusCreated, nil
}

func (s *server) getOrder(w http.ResponseWriter, r *http.Request, id identity) (any, int, error) {
	oid, err := pathID(r, "id")
	if err != nil {
		return nil, 0, err
	}
	o, err := s.svc.Get(r.Context(), id.user, id.admin, oid)
	if err != nil {
		return nil, 0, err
	}
	return toOrderJSON(o), http.StatusOK, nil
}

func (s *server) listOrders(w http.ResponseWriter, r *http.Request, id identity) (any, int, error) {
	list, err := s.svc.List(r.Context(), id.user)
	if err != nil {
		return nil, 0, err
	}
	out := make([]orderJSON, len(list))
	for i, o := range list {
		out[i] = toOrderJSON(o)
	}
	return map[string]any{"orders": out}, http.StatusOK, nil
}

// act serves a transition of the order in the path: pay, cancel, confirm
// (the owner's), ship (an admin's).
func (s *server) act(f func(ctx context.Context, user, id int64) (order.Order, error)) authedFunc {
	return func(w http.ResponseWriter, r *http.Request, id identity) (any, int, error) {
		oid, err := pathID(r, "id")
		if err != nil {
			return nil, 0, err
		}
		o, err := f(r.Context(), id.user, oid)
		if err != nil {
			return nil, 0, err
		}
		return toOrderJSON(o), http.StatusOK, nil
	}
}

// deadlineRequest moves one deadline: exactly one of the two is set.
type deadlineRequest struct {
	PayDeadline     *time.Time `json:"pay_deadline"`
	ConfirmDeadline *time.Time `json:"confirm_deadline"`
}

func (s *server) moveDeadline(w http.ResponseWriter, r *http.Request, _ identity) (any, int, error) {
	oid, err := pathID(r, "id")
	if err != nil {
		return nil, 0, err
	}
	var req deadlineRequest
	if err := decode(w, r, &req); err != nil {
		return nil, 0, err
	}
	var o order.Order
	switch {
	case req.PayDeadline != nil && req.ConfirmDeadline == nil:
		o, err = s.svc.MoveDeadline(r.Context(), oid, order.Pending, *req.PayDeadline)
	case req.ConfirmDeadline != nil && req.PayDeadline == nil:
		o, err = s.svc.MoveDeadline(r.Context(), oid, order.Shipped, *req.ConfirmDeadline)
	default:
		return nil, 0, order.Errorf(order.CodeInvalidRequest, "give exactly one of pay_deadline and confirm_deadline (RFC 3339)")
	}
	if err != nil {
		return nil, 0, err
	}
	return toOrderJSON(o), http.StatusOK, nil
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// observe logs and measures every request, and turns a panic into a 500
// with a JSON body: the stack goes to the log, never to the client.
func (s *server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
		defer cancel()
		r = r.WithContext(ctx)
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				buf := make([]byte, 8<<10)
				buf = buf[:runtime.Stack(buf, false)]
				s.log.Error("panic serving request", zap.String("path", r.URL.Path), zap.Any("panic", v), zap.ByteString("stack", buf))
				if sw.code == 0 {
					writeJSON(sw, http.StatusInternalServerError, errorJSON{Error: order.CodeInternal, Message: "internal error"})
				}
			}
			route := r.Pattern
			if route == "" || route == "/" {
				route = "other"
			}
			d := time.Since(start)
			s.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
			s.latency.WithLabelValues(route).Observe(d.Seconds())
			s.log.Info("request", zap.String("method", r.Method), zap.String("path", r.URL.Path),
				zap.Int("status", sw.code), zap.Duration("took", d))
		}()
		next.ServeHTTP(sw, r)
	})
}
