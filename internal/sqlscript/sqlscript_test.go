package sqlscript

import (
	"slices"
	"testing"
)

func TestStatements(t *testing.T) {
	got := Statements("-- a table; and its comment\nCREATE TABLE a (id INT);\n\n  -- another\nCREATE TABLE b (\n  id INT\n);\n;\n")
	want := []string{"CREATE TABLE a (id INT)", "CREATE TABLE b (\n  id INT\n)"}
	if !slices.Equal(got, want) {
		t.Fatalf("%q, want %q", got, want)
	}
}
