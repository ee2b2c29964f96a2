package main_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order/ordertest"
)

// A schema one version ahead of the binary (a newer orderd ran migrate):
// running listen and serve stop with exit 1 saying to upgrade, and listen,
// serve and migrate refuse to start with exit 2 saying the same.
func TestSchemaNewerThanBinary(t *testing.T) {
	const sentence = "this database was migrated by a newer orderd; upgrade this binary"
	url := ordertest.MySQLURL(t)
	testkit.Redis(t, redisDB)
	env := []string{"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB), "ORDERD_DB=" + url,
		"ORDERD_KEY_PREFIX=newer:", "ORDERD_LOG_FORMAT=json", "ORDERD_JWT_SECRET=" + strings.Repeat("s", 32)}
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	metricsAddr, apiAddr := freeAddr(t), freeAddr(t)
	listen := start(t, env, "listen", "--metrics-addr", metricsAddr)
	serve := start(t, env, "serve", "--addr", apiAddr)
	waitHTTP(t, "http://"+metricsAddr+"/healthz")
	waitHTTP(t, "http://"+apiAddr+"/healthz")

	st := ordertest.Open(t, url)
	var latest int64
	if err := st.DB().Get(&latest, `SELECT MAX(version_id) FROM goose_db_version`); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DB().Exec(`INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, 1)`, latest+1); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]*proc{"listen": listen, "serve": serve} {
		select {
		case <-p.done:
		case <-time.After(testkit.Scale(30 * time.Second)):
			t.Fatalf("%s still runs 30 s after the schema moved past it", name)
		}
		if code := p.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(p.stderr.String(), sentence) {
			t.Fatalf("running %s: exit %d, want 1 saying %q:\n%s", name, code, sentence, p.stderr)
		}
	}
	for _, args := range [][]string{{"listen", "--metrics-addr", ""}, {"serve", "--addr", freeAddr(t)}, {"migrate"}} {
		code, out := runCmd(t, env, args...)
		if code != 2 || !strings.Contains(out, sentence) || !strings.Contains(out, "--db") {
			t.Fatalf("%s on a newer schema: exit %d, want 2 naming --db and saying %q:\n%s", args[0], code, sentence, out)
		}
	}
}
