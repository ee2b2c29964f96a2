// Package sqlscript splits a SQL script (a schema file of the examples) into
// its statements.
package sqlscript

import "strings"

// Statements returns the statements of script, in order: lines that start
// with "--" (comments) left out, the rest split at ";", blank statements
// dropped. It knows no quoting: it is for plain DDL scripts, without ";" in
// strings.
func Statements(script string) []string {
	var b strings.Builder
	for line := range strings.Lines(script) {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			b.WriteString(line)
		}
	}
	var out []string
	for _, q := range strings.Split(b.String(), ";") {
		if strings.TrimSpace(q) != "" {
			out = append(out, strings.TrimSpace(q))
		}
	}
	return out
}
