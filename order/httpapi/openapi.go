package httpapi

import (
	_ "embed"
	"net/http"
	"slices"
)

// openAPI is the OpenAPI 3 document of the API. The tests validate every
// request and response they make against it, and check that it documents
// exactly the routes below.
//
//go:embed openapi.yaml
var openAPI []byte

// routes are the endpoints the API serves, as http.ServeMux patterns.
var routes = []string{
	"PUT /v1/skus/{sku}",
	"GET /v1/skus/{sku}",
	"GET /v1/skus",
	"POST /v1/orders",
	"GET /v1/orders/{id}",
	"GET /v1/orders",
	"POST /v1/orders/{id}/pay",
	"POST /v1/orders/{id}/cancel",
	"POST /v1/orders/{id}/ship",
	"POST /v1/orders/{id}/confirm",
	"POST /v1/orders/{id}/deadline",
	"POST /v1/orders/{id}/expire",
	"GET /healthz",
	"GET /metrics",
	"GET /openapi.yaml",
}

// OpenAPI returns the OpenAPI 3 document of the API, served at
// GET /openapi.yaml.
func OpenAPI() []byte { return slices.Clone(openAPI) }

// Routes returns the endpoints the API serves, as "METHOD /path" patterns
// (http.ServeMux's, with {name} for a path parameter).
func Routes() []string { return slices.Clone(routes) }

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(openAPI)
}
