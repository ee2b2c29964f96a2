package main_test

import (
	"strings"
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

// containsLine reports whether one line of out contains every one of parts.
func containsLine(out string, parts ...string) bool {
	for line := range strings.Lines(out) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}
