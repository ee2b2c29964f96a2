package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are what a token says: the user id (as the string claim "sub"),
// whether the user is an admin, and when the token expires.
type Claims struct {
	Admin bool `json:"admin,omitempty"`
	jwt.RegisteredClaims
}

// IssueToken returns an HS256 token for user, valid for ttl.
func IssueToken(secret []byte, user int64, admin bool, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("httpapi: empty JWT secret")
	}
	if user <= 0 {
		return "", errors.New("httpapi: user id must be a positive integer")
	}
	now := time.Now()
	c := Claims{Admin: admin, RegisteredClaims: jwt.RegisteredClaims{
		Subject:   strconv.FormatInt(user, 10),
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}

// identity is the caller a valid token names.
type identity struct {
	user  int64
	admin bool
}

// parseToken checks signature (HS256 only), expiry (required), subject and
// the claims' JSON itself (strictClaims).
func parseToken(secret []byte, raw string) (identity, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(raw, &c, func(*jwt.Token) (any, error) { return secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(5*time.Second))
	if err != nil {
		return identity{}, err
	}
	if err := strictClaims(raw); err != nil {
		return identity{}, err
	}
	user, err := strconv.ParseInt(c.Subject, 10, 64)
	if err != nil || user <= 0 {
		return identity{}, errors.New("sub is not a positive integer user id")
	}
	return identity{user: user, admin: c.Admin}, nil
}

// claimTypes are the claims orderd reads, with the JSON type each must have.
var claimTypes = map[string]string{"sub": "string", "admin": "bool", "exp": "number", "iat": "number", "nbf": "number"}

// strictClaims rejects what encoding/json would let through into Claims: a
// claim named in another case ("ADMIN", "Sub"), a claim given twice (the
// last would win), and a claim of another type ("exp" as a string, "admin"
// as 1). The signature is already checked: this reads the payload again.
func strictClaims(raw string) error {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return errors.New("token is not three dot-separated parts")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return errors.New("claims are not base64url")
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errors.New("claims are not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return errors.New("claims are not valid JSON")
		}
		name := t.(string) // object keys are strings
		var v any
		if err := dec.Decode(&v); err != nil {
			return errors.New("claims are not valid JSON")
		}
		lower := strings.ToLower(name)
		want, known := claimTypes[lower]
		switch {
		case !known:
			continue
		case name != lower:
			return fmt.Errorf("claim %q: claim names are lower case", name)
		case seen[name]:
			return fmt.Errorf("claim %q given twice", name)
		}
		seen[name] = true
		var ok bool
		switch want {
		case "string":
			_, ok = v.(string)
		case "bool":
			_, ok = v.(bool)
		case "number":
			_, ok = v.(json.Number)
		}
		if !ok {
			return fmt.Errorf("claim %q must be a JSON %s", name, want)
		}
	}
	return nil
}

// CheckAdminToken returns nil when raw is a token the API takes (signature,
// expiry, claims) and names an admin; else an error saying why not. The
// console signs people in with it.
func CheckAdminToken(secret []byte, raw string) error {
	id, err := parseToken(secret, raw)
	if err != nil {
		return err
	}
	if !id.admin {
		return errors.New("the token is not an admin's")
	}
	return nil
}
