package main_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
)

// health reads /healthz: the status code and the body's fields.
func health(t *testing.T, url string) (int, map[string]string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]string
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("/healthz body is not a JSON object of strings: %q", raw)
	}
	return resp.StatusCode, body
}

// Redis restarted without expired-key events (set at run time, as many do):
// `orderd listen` notices within a second or two of its resubscription and
// says so in /healthz (503, "notify") and the log; with --set-notify-config it
// sets them again and stays healthy.
func TestListenHealthzAfterRedisRestartWithoutEvents(t *testing.T) {
	for _, setIt := range []bool{false, true} {
		name := map[bool]string{false: "check", true: "set-notify-config"}[setIt]
		t.Run(name, func(t *testing.T) {
			rs := testkit.StartPrivateRedis(t)
			ctx := context.Background()
			if err := rs.Client.ConfigSet(ctx, "notify-keyspace-events", "Ex").Err(); err != nil {
				t.Fatal(err)
			}
			env := []string{"ORDERD_REDIS_URL=unix://" + rs.Sock, "ORDERD_DB=sqlite:" + filepath.Join(rs.Dir, "o.db"), "ORDERD_LOG_FORMAT=json"}
			if code, out := runCmd(t, env, "migrate"); code != 0 {
				t.Fatalf("migrate: %d %s", code, out)
			}
			metrics := freeAddr(t)
			args := []string{"listen", "--metrics-addr", metrics}
			if setIt {
				args = append(args, "--set-notify-config")
			}
			p := start(t, env, args...)
			url := "http://" + metrics + "/healthz"
			waitHTTP(t, url)

			rs.Restart() // notify-keyspace-events is "" again
			restarted := time.Now()
			if setIt {
				testkit.WaitFor(t, 10*time.Second, "notify-keyspace-events set again", func() bool {
					return rs.Client.ConfigGet(ctx, "notify-keyspace-events").Val()["notify-keyspace-events"] != ""
				})
				waitHTTP(t, url)
			} else {
				var body map[string]string
				testkit.WaitFor(t, 10*time.Second, "/healthz 503 naming notify", func() bool {
					var code int
					code, body = health(t, url)
					return code == 503 && body["notify"] != ""
				})
				took := time.Since(restarted)
				t.Logf("/healthz named notify %v after the restart", took.Round(time.Millisecond))
				if took > 5*time.Second { // the periodic check alone would take up to 10 s
					t.Errorf("/healthz reported events off %v after the restart, want within a second or two", took)
				}
				if body["status"] != "unavailable" {
					t.Errorf("/healthz body %v", body)
				}
				testkit.WaitFor(t, 5*time.Second, "an error log line saying expired-key events are off", func() bool {
					return containsLine(p.stderr.String(), `"level":"error"`, "expired-key events") // the pipe copies it in a while
				})
			}
			if code := p.stop(t); code != 0 {
				t.Fatalf("exit %d", code)
			}
		})
	}
}
