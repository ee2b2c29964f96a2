package httpapi

import (
	"errors"
	"strconv"
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

// parseToken checks signature (HS256 only), expiry (required) and subject.
func parseToken(secret []byte, raw string) (identity, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(raw, &c, func(*jwt.Token) (any, error) { return secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(5*time.Second))
	if err != nil {
		return identity{}, err
	}
	user, err := strconv.ParseInt(c.Subject, 10, 64)
	if err != nil || user <= 0 {
		return identity{}, errors.New("sub is not a positive integer user id")
	}
	return identity{user: user, admin: c.Admin}, nil
}
