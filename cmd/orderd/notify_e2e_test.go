package main_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/internal/testkit"
)

// redisOnSocket is a redis-server of the test's own on a unix socket, which
// the test can restart: a restart loses settings made at run time.
type redisOnSocket struct {
	t      *testing.T
	dir    string
	sock   string
	cmd    *exec.Cmd
	client *redis.Client
}

func startRedisOnSocket(t *testing.T) *redisOnSocket {
	t.Helper()
	dir := t.TempDir()
	r := &redisOnSocket{t: t, dir: dir, sock: filepath.Join(dir, "redis.sock")}
	r.client = redis.NewClient(&redis.Options{Network: "unix", Addr: r.sock, MaxRetries: -1})
	r.start()
	t.Cleanup(func() { r.kill(); r.client.Close() })
	return r
}

func (r *redisOnSocket) start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", "0", "--unixsocket", r.sock, "--save", "", "--appendonly", "no", "--dir", r.dir)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.client.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			r.t.Fatal("redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *redisOnSocket) kill() {
	if r.cmd != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}

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
			rs := startRedisOnSocket(t)
			ctx := context.Background()
			if err := rs.client.ConfigSet(ctx, "notify-keyspace-events", "Ex").Err(); err != nil {
				t.Fatal(err)
			}
			env := []string{"ORDERD_REDIS_URL=unix://" + rs.sock, "ORDERD_DB=sqlite:" + filepath.Join(rs.dir, "o.db"), "ORDERD_LOG_FORMAT=json"}
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

			rs.kill()
			rs.start() // notify-keyspace-events is "" again
			restarted := time.Now()
			if setIt {
				testkit.WaitFor(t, 10*time.Second, "notify-keyspace-events set again", func() bool {
					return rs.client.ConfigGet(ctx, "notify-keyspace-events").Val()["notify-keyspace-events"] != ""
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
