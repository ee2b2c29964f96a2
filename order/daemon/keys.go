package daemon

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/orderd/orderd/expiry"
)

// ParseKeyID returns the order id of key, which must be prefix followed by a
// positive decimal id and nothing else. The error wraps
// expiry.ErrMalformedKey (and so expiry.SkipRetry): a malformed key never gets
// better. It does not quote the key, which may be of any length.
func ParseKeyID(key, prefix string) (int64, error) {
	s, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return 0, fmt.Errorf("order: key lacks %q: %w", prefix, expiry.ErrMalformedKey)
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != s {
		return 0, fmt.Errorf("order: malformed order id after %q: %w", prefix, expiry.ErrMalformedKey)
	}
	return id, nil
}
