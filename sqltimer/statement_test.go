package sqltimer

import (
	"slices"
	"testing"
)

// Placeholders are found outside quoted text only, and bound as lists.
func TestStatementBind(t *testing.T) {
	st, err := compile("SELECT id FROM t WHERE id IN (:ids) AND at > '2026-01-01 10:00:00' AND `a:b` = 1 OR id IN (:ids)", "ids")
	if err != nil {
		t.Fatal(err)
	}
	q, args := st.bind([]any{int64(1), int64(2)}, 0)
	want := "SELECT id FROM t WHERE id IN (?, ?) AND at > '2026-01-01 10:00:00' AND `a:b` = 1 OR id IN (?, ?)"
	if q != want || !slices.Equal(args, []any{int64(1), int64(2), int64(1), int64(2)}) {
		t.Fatalf("bound %q %v, want %q and the ids twice", q, args, want)
	}
	st, err = compile("SELECT id FROM t ORDER BY at LIMIT :limit", "limit")
	if err != nil {
		t.Fatal(err)
	}
	if q, args := st.bind(nil, 50); q != "SELECT id FROM t ORDER BY at LIMIT ?" || !slices.Equal(args, []any{50}) {
		t.Fatalf("bound %q %v", q, args)
	}
	for _, c := range []struct{ stmt, allowed string }{
		{"SELECT id FROM t WHERE id IN (:ids) LIMIT :limit", "ids"},
		{"SELECT id FROM t WHERE user = :user", "ids"},
		{"SELECT id FROM t WHERE id IN (:ids)", "limit"},
	} {
		if err := CheckPlaceholders(c.stmt, c.allowed); err == nil {
			t.Errorf("%q with :%s allowed: no error", c.stmt, c.allowed)
		}
	}
	if st, _ := compile("  \n", "ids"); !st.empty() {
		t.Fatal("a blank statement is not empty")
	}
}
