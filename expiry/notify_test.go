package expiry_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/orderd/orderd/expiry"
)

func TestCheckNotify(t *testing.T) {
	rdb := privateRedis(t, "--notify-keyspace-events", "")
	ctx := context.Background()
	err := expiry.CheckNotify(ctx, rdb)
	if !errors.Is(err, expiry.ErrNotifyDisabled) {
		t.Fatalf("err = %v, want ErrNotifyDisabled", err)
	}
	for _, want := range []string{"notify-keyspace-events", "Ex", "CONFIG SET", "redis.conf", "parameter group"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	rdb.ConfigSet(ctx, "notify-keyspace-events", "Kg")
	if err := expiry.EnableNotify(ctx, rdb); err != nil {
		t.Fatal(err)
	}
	if err := expiry.CheckNotify(ctx, rdb); err != nil {
		t.Fatalf("after EnableNotify: %v", err)
	}
	flags := rdb.ConfigGet(ctx, "notify-keyspace-events").Val()["notify-keyspace-events"]
	for _, f := range "Kgx" { // kept what was there
		if !strings.ContainsRune(flags, f) {
			t.Fatalf("flags %q lost %q", flags, f)
		}
	}
}

func TestCheckNotifyConfigDisabled(t *testing.T) {
	rdb := privateRedis(t, "--rename-command", "CONFIG", "")
	err := expiry.CheckNotify(context.Background(), rdb)
	if !errors.Is(err, expiry.ErrConfigUnavailable) || !strings.Contains(err.Error(), "notify-keyspace-events") {
		t.Fatalf("err = %v, want ErrConfigUnavailable naming the setting", err)
	}
	if err := expiry.EnableNotify(context.Background(), rdb); !errors.Is(err, expiry.ErrConfigUnavailable) {
		t.Fatalf("EnableNotify err = %v", err)
	}
}

func TestNotifyEnabled(t *testing.T) {
	for flags, want := range map[string]bool{"": false, "Ex": true, "xE": true, "AKE": true, "KEA": true, "Kx": false, "E": false, "Eg$": false} {
		if got := expiry.NotifyEnabled(flags); got != want {
			t.Errorf("NotifyEnabled(%q) = %v, want %v", flags, got, want)
		}
	}
}
