package transitions_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine outlives them: a relay
// left running is a shutdown that hangs.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
