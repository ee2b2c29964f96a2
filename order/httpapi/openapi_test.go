package httpapi_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/httpapi"
	"github.com/orderd/orderd/order/ordertest"
)

// apiDoc loads and validates the OpenAPI document once, and a router over
// it that matches any host (the tests' servers listen on ports of their own).
var apiDoc = sync.OnceValues(func() (*openapi3.T, error) {
	doc, err := openapi3.NewLoader().LoadFromData(httpapi.OpenAPI())
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, err
	}
	return doc, nil
})

var apiRouter = sync.OnceValues(func() (routers.Router, error) {
	doc, err := apiDoc()
	if err != nil {
		return nil, err
	}
	anyHost := *doc
	anyHost.Servers = nil
	return legacy.NewRouter(&anyHost)
})

// validating is an http.RoundTripper that checks every response against the
// OpenAPI document (its status among those documented for the operation,
// its body against the schema), and every request the server accepted (2xx)
// too. Requests made wrong on purpose are refused by the server and left
// unchecked; their error responses are checked all the same.
type validating struct {
	next http.RoundTripper
	tb   testing.TB
}

func (v validating) RoundTrip(req *http.Request) (*http.Response, error) {
	router, err := apiRouter()
	if err != nil {
		v.tb.Errorf("openapi.yaml: %v", err)
		return v.next.RoundTrip(req)
	}
	var reqBody []byte
	if req.Body != nil {
		reqBody, _ = io.ReadAll(req.Body)
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	resp, err := v.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(respBody))
	if err != nil {
		return resp, nil // the caller sees the short body
	}

	checked := req.Clone(req.Context())
	checked.Body = io.NopCloser(bytes.NewReader(reqBody))
	route, params, err := router.FindRoute(checked)
	if err != nil {
		// An undocumented path or method: the server must say so.
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			v.tb.Errorf("%s %s answered %d but is not in openapi.yaml: %v", req.Method, req.URL.Path, resp.StatusCode, err)
		}
		return resp, nil
	}
	in := &openapi3filter.RequestValidationInput{Request: checked, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}}
	if resp.StatusCode/100 == 2 {
		if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
			v.tb.Errorf("%s %s (answered %d) does not match openapi.yaml: %v", req.Method, req.URL.Path, resp.StatusCode, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(respBody)), Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}}
	if err := openapi3filter.ValidateResponse(req.Context(), out); err != nil {
		v.tb.Errorf("the answer %d to %s %s does not match openapi.yaml: %v\nbody: %.300s", resp.StatusCode, req.Method, req.URL.Path, err, respBody)
	}
	return resp, nil
}

// The document is valid OpenAPI 3, and documents exactly the routes the
// server serves: none missing, none extra.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	doc, err := apiDoc()
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	served := httpapi.Routes()
	slices.Sort(documented)
	slices.Sort(served)
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("the server serves %s; openapi.yaml does not document it", r)
		}
	}
	for _, r := range documented {
		if !slices.Contains(served, r) {
			t.Errorf("openapi.yaml documents %s; the server does not serve it", r)
		}
	}
	for _, r := range documented {
		method, path, _ := strings.Cut(r, " ")
		if doc.Paths.Find(path).GetOperation(method).Responses.Value("405") == nil {
			t.Errorf("%s: 405 (another method on a known path) not documented", r)
		}
	}
}

// GET /openapi.yaml serves the document.
func TestServesOpenAPI(t *testing.T) {
	a := newAPI(t, ordertest.Open(t, ordertest.SQLiteURL(t)), order.Config{})
	code, _ := a.do("GET", "/openapi.yaml", "", nil)
	if code != 200 {
		t.Fatalf("GET /openapi.yaml: %d", code)
	}
	resp, err := http.Get(a.srv.URL + "/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !bytes.Equal(body, httpapi.OpenAPI()) || resp.Header.Get("Content-Type") != "application/yaml" {
		t.Fatalf("served %d bytes as %q, not the document", len(body), resp.Header.Get("Content-Type"))
	}
}
