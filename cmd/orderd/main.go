// Command orderd closes unpaid orders and confirms receipt of shipped ones on
// time, from Redis key expiry. See `orderd --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// run executes the command line args and returns the exit code: 0 ok,
// 1 runtime failure, 2 bad usage or configuration.
func run(ctx context.Context, args []string) int {
	cmd, opts := newRootCmd()
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if opts.log != nil && opts.LogFormat == "json" {
		// One more line of a JSON log (under a supervisor, say), not plain text.
		opts.log.Error("orderd: " + err.Error())
	} else {
		fmt.Fprintln(os.Stderr, "orderd:", err)
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 2 // cobra's own errors: unknown command, bad flag, wrong arguments
}

// exitError carries the exit code of a failure.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf reports bad usage or configuration: exit 2.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// runtimeError reports a failure at run time: exit 1.
func runtimeError(err error) error {
	var ee *exitError
	if err == nil || errors.As(err, &ee) {
		return err
	}
	return &exitError{code: 1, err: err}
}
