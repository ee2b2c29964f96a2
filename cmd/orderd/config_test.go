package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "orderd.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// completeListen parses args as `orderd listen` would and reads the
// environment and the configuration file, without running the daemon.
func completeListen(t *testing.T, args ...string) (*listenOptions, error) {
	t.Helper()
	root, g := newRootCmd()
	var listen *cobra.Command
	for _, c := range root.Commands() {
		if c.Name() == "listen" {
			listen = c
		}
	}
	if err := listen.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	err := g.complete(listen)
	o := &listenOptions{globalOptions: g, MetricsAddr: listen.Flags().Lookup("metrics-addr").Value.String()}
	return o, err
}

// A file sets what the flags set, ${NAME} comes from the environment, and
// the environment and the command line win over the file, in that order.
func TestConfigFileSettings(t *testing.T) {
	t.Setenv("SHOP_PREFIX", "shop:")
	t.Setenv("ORDERD_SWEEP_INTERVAL", "45s") // the environment wins over the file
	path := writeConfig(t, `
redis_url: redis://127.0.0.1:6390/3
db: sqlite:/tmp/shop.db
key_prefix: "${SHOP_PREFIX}cache:"
sweep_interval: 10s
pay_timeout: 5m
metrics_addr: 127.0.0.1:9999
log_format: json
`)
	o, err := completeListen(t, "--config", path, "--pay-timeout", "7m")
	if err != nil {
		t.Fatal(err)
	}
	if o.RedisURL != "redis://127.0.0.1:6390/3" || o.DB != "sqlite:/tmp/shop.db" || o.KeyPrefix != "shop:cache:" || o.MetricsAddr != "127.0.0.1:9999" {
		t.Fatalf("from the file: redis %q db %q prefix %q metrics %q", o.RedisURL, o.DB, o.KeyPrefix, o.MetricsAddr)
	}
	if o.SweepInterval != 45*time.Second {
		t.Fatalf("sweep interval %v, want 45s from the environment over the file's 10s", o.SweepInterval)
	}
	if o.PayTimeout != 7*time.Minute {
		t.Fatalf("pay timeout %v, want 7m from the command line over the file's 5m", o.PayTimeout)
	}

	t.Setenv("ORDERD_CONFIG", path) // the file named in the environment
	o, err = completeListen(t)
	if err != nil || o.KeyPrefix != "shop:cache:" {
		t.Fatalf("ORDERD_CONFIG: prefix %q, %v", o.KeyPrefix, err)
	}
}

// A file orderd cannot use is refused with exit 2, naming the file and what
// is wrong, before anything starts.
func TestConfigFileErrors(t *testing.T) {
	sqlTimer := "  - name: pay_timeout\n    key: \"order_pay:\"\n    claim: SELECT id FROM orders WHERE id IN (:ids) FOR UPDATE\n    apply: [\"UPDATE orders SET status = 4 WHERE id IN (:ids)\"]\n"
	for _, c := range []struct{ name, text, want string }{
		{"yaml", "redis_url: [unclosed", "yaml"},
		{"unknown key", "redis_url: redis://x:1/0\nsweep_intervall: 1s\n", `unknown key "sweep_intervall"`},
		{"a flag name with -", "sweep-interval: 1s\n", `unknown key "sweep-interval"`},
		{"a list for a value", "db: [a, b]\n", "db: want a single value"},
		{"unset variable", "db: mysql://u:${ORDERD_TEST_UNSET_SECRET}@h:1/d\n", "${ORDERD_TEST_UNSET_SECRET} is not set"},
		{"bad value", "sweep_interval: soon\n", "sweep_interval"},
		{"not a mapping", "- a\n- b\n", "want a mapping"},
		{"timer without name", "timers:\n  - key: \"a:\"\n    webhook: {url: \"http://x\", secret: s}\n", "no name"},
		{"timer without key", "timers:\n  - name: a\n    webhook: {url: \"http://x\", secret: s}\n", "no key"},
		{"timer without work", "timers:\n  - name: a\n    key: \"a:\"\n", "neither claim and apply nor webhook"},
		{"timer with both", "timers:\n  - name: a\n    key: \"a:\"\n    claim: SELECT 1\n    apply: [SELECT 1]\n    webhook: {url: \"http://x\", secret: s}\n", "both claim/apply and webhook"},
		{"claim without apply", "timers:\n  - name: a\n    key: \"a:\"\n    claim: SELECT id FROM t WHERE id IN (:ids)\n", "claim and apply go together"},
		{"unknown timer key", "timers:\n  - name: a\n    key: \"a:\"\n    clam: x\n", "field clam not found"},
		{"other placeholder", "timers:\n  - name: a\n    key: \"a:\"\n    claim: SELECT id FROM t WHERE id IN (:ids) AND shop = :shop\n    apply: [SELECT 1]\n", "placeholder :shop"},
		{"limit in a claim", "timers:\n  - name: a\n    key: \"a:\"\n    claim: SELECT id FROM t WHERE id IN (:ids) LIMIT :limit\n    apply: [SELECT 1]\n", "placeholder :limit"},
		{"same name twice", "timers:\n" + sqlTimer + sqlTimer, `another timer has the name "pay_timeout"`},
		{"bad name", "timers:\n  - name: Pay-Timeout\n    key: \"a:\"\n    webhook: {url: \"http://x\", secret: s}\n", `name "Pay-Timeout"`},
		{"webhook without secret", "timers:\n  - name: a\n    key: \"a:\"\n    webhook: {url: \"http://x\"}\n", "webhook: no secret"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writeConfig(t, c.text)
			code := run(context.Background(), []string{"listen", "--config", path, "--log-format", "json"})
			if code != 2 {
				t.Fatalf("exit %d, want 2", code)
			}
			o, err := completeListen(t, "--config", path)
			if err == nil && o.config != nil && len(o.config.timers) > 0 {
				err = runListen(context.Background(), o)
			}
			var ee *exitError
			if err == nil || !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want exit 2 naming %s and %q", err, path, c.want)
			}
		})
	}
}

// The example file loads, with its secret from the environment, and every
// commented-out setting is valid too.
func TestConfigExample(t *testing.T) {
	raw, err := os.ReadFile("../../systemd/orderd.yaml.example")
	if err != nil {
		t.Fatal(err)
	}
	setting := regexp.MustCompile(`^# ([a-z_]+: .*\n?)$`)
	var text strings.Builder
	for line := range strings.Lines(string(raw)) {
		if m := setting.FindStringSubmatch(line); m != nil {
			line = m[1] // a setting switched on
		}
		text.WriteString(line)
	}
	t.Setenv("ORDERD_DB_PASSWORD", "s3cret")
	o, err := completeListen(t, "--config", writeConfig(t, text.String()))
	if err != nil {
		t.Fatal(err)
	}
	if o.DB != "mysql://orderd:s3cret@127.0.0.1:3306/orderd" || o.KeyPrefix != "laravel_database_laravel_cache_:" {
		t.Fatalf("db %q, key prefix %q", o.DB, o.KeyPrefix)
	}
}
