package expiry_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/expiry"
)

func TestParseChannel(t *testing.T) {
	for ch, want := range map[string]int{"__keyevent@0__:expired": 0, "__keyevent@15__:expired": 15} {
		if db, err := expiry.ParseChannel(ch); err != nil || db != want {
			t.Errorf("ParseChannel(%q) = %d, %v", ch, db, err)
		}
	}
	for _, ch := range []string{"", "__keyevent@__:expired", "__keyevent@x__:expired", "__keyevent@1__:del",
		"__keyspace@1__:expired", "__keyevent@-1__:expired", "__keyevent@01__:expired", "__keyevent@1__expired"} {
		if _, err := expiry.ParseChannel(ch); err == nil {
			t.Errorf("ParseChannel(%q) accepted", ch)
		}
	}
	if got := expiry.ExpiredChannel(3); got != "__keyevent@3__:expired" {
		t.Errorf("ExpiredChannel(3) = %q", got)
	}
}

func TestNewEventForeignKey(t *testing.T) {
	_, err := expiry.NewEvent("__keyevent@0__:expired", "other:1", "app:", time.Now())
	if !errors.Is(err, expiry.ErrForeignKey) {
		t.Fatalf("err = %v", err)
	}
}

// FuzzNewEvent feeds odd bytes, empty and long keys, channels and prefixes.
func FuzzNewEvent(f *testing.F) {
	f.Add("__keyevent@0__:expired", "order_pay:1", "")
	f.Add("__keyevent@12__:expired", "laravel_cache:order_pay:99", "laravel_cache:")
	f.Add("__keyevent@0__:expired", "", "")
	f.Add("__keyevent@0__:expired", "\x00\xff\xfe", "\x00")
	f.Add("__keyevent@99999999999999999999__:expired", "k", "")
	f.Add("__keyevent@0__:expired", strings.Repeat("k", 1<<16), "k")
	f.Fuzz(func(t *testing.T, channel, key, prefix string) {
		ev, err := expiry.NewEvent(channel, key, prefix, time.Now())
		if err != nil {
			return
		}
		if ev.RawKey != key || prefix+ev.Key != key || ev.DB < 0 {
			t.Fatalf("NewEvent(%q, %q, %q) = %+v", channel, key, prefix, ev)
		}
		if expiry.ExpiredChannel(ev.DB) != channel {
			t.Fatalf("channel %q round-trips to %q", channel, expiry.ExpiredChannel(ev.DB))
		}
	})
}
