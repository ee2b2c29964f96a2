package main_test

import (
	"testing"
	"time"

	"github.com/orderd/orderd/order/httpapi"
)

func signToken(t *testing.T, secret string, user int) string {
	tok, err := httpapi.IssueToken([]byte(secret), int64(user), false, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
