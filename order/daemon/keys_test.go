package daemon_test

import (
	"errors"
	"testing"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/daemon"
)

func TestParseKeyID(t *testing.T) {
	for key, want := range map[string]int64{"order_pay:1": 1, "order_pay:9223372036854775807": 9223372036854775807} {
		if id, err := daemon.ParseKeyID(key, order.PayKeyPrefix); err != nil || id != want {
			t.Errorf("ParseKeyID(%q) = %d, %v", key, id, err)
		}
	}
	for _, key := range []string{"order_pay:", "order_pay:abc", "order_pay:0", "order_pay:-1", "order_pay:01", "order_pay:+1",
		"order_pay:1 ", "order_pay:1:2", "order_pay:99999999999999999999", "order_confirm:1", "order_pay:\x00"} {
		if _, err := daemon.ParseKeyID(key, order.PayKeyPrefix); !errors.Is(err, expiry.SkipRetry) {
			t.Errorf("ParseKeyID(%q) err = %v, want SkipRetry", key, err)
		}
	}
}

func FuzzParseKeyID(f *testing.F) {
	for _, s := range []string{"order_pay:1", "order_pay:", "order_pay:-0", "\xff", "order_pay:18446744073709551616"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		id, err := daemon.ParseKeyID(key, order.PayKeyPrefix)
		if err == nil && (id <= 0 || order.PayKey(id) != key) {
			t.Fatalf("ParseKeyID(%q) = %d", key, id)
		}
	})
}
