package expiry

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Event is one expired key, as announced by Redis on __keyevent@<db>__:expired.
type Event struct {
	// Key is the expired key with the listener's KeyPrefix removed. Handlers
	// and the ServeMux route on it.
	Key string
	// RawKey is the key exactly as Redis sent it.
	RawKey string
	// DB is the number of the Redis database the key lived in.
	DB int
	// Received is when the listener read the event from Redis.
	Received time.Time
	// Deadline is when the timer was due, as its Scheduler's due index says,
	// for a timer the reaper handed over; zero when the key's expiry came as
	// an event (Redis does not say when a key was due).
	Deadline time.Time
	// Attempt is how many times a handler failed on this timer before (0 the
	// first time). See ListenerConfig.MaxAttempts.
	Attempt int

	retry bool // it failed before, or was re-armed: its attempts are in Redis
}

// ErrForeignKey reports an expired key that does not carry the listener's key
// prefix: it belongs to some other program and is ignored.
var ErrForeignKey = errors.New("expiry: key does not carry the key prefix")

// ExpiredChannel returns the keyevent channel on which Redis announces expired
// keys of database db.
func ExpiredChannel(db int) string {
	return "__keyevent@" + strconv.Itoa(db) + "__:expired"
}

// ParseChannel returns the database number of a keyevent channel such as
// "__keyevent@3__:expired".
func ParseChannel(channel string) (db int, err error) {
	rest, ok := strings.CutPrefix(channel, "__keyevent@")
	if !ok {
		return 0, fmt.Errorf("expiry: %q is not a keyevent channel", channel)
	}
	num, event, ok := strings.Cut(rest, "__:")
	if !ok || event != "expired" {
		return 0, fmt.Errorf("expiry: %q is not an expired-event channel", channel)
	}
	db, err = strconv.Atoi(num)
	if err != nil || db < 0 || num != strconv.Itoa(db) {
		return 0, fmt.Errorf("expiry: bad database number in channel %q", channel)
	}
	return db, nil
}

// NewEvent builds the Event for a key announced on channel, removing prefix.
// It returns ErrForeignKey when the key lacks prefix, and an error when the
// channel is not an expired-event channel.
func NewEvent(channel, rawKey, prefix string, received time.Time) (Event, error) {
	db, err := ParseChannel(channel)
	if err != nil {
		return Event{}, err
	}
	key, ok := strings.CutPrefix(rawKey, prefix)
	if !ok {
		return Event{}, fmt.Errorf("%w: %q", ErrForeignKey, rawKey)
	}
	return Event{Key: key, RawKey: rawKey, DB: db, Received: received}, nil
}
