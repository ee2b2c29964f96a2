package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// routeLibraryLogs sends what go-redis and the MySQL driver print through
// log, so that every line of a --log-format json stream is JSON.
func routeLibraryLogs(log *zap.Logger) {
	redis.SetLogger(redisLogger{log.Named("redis").WithOptions(zap.AddCallerSkip(1))})
	_ = mysql.SetLogger(mysqlLogger{log.Named("mysql").WithOptions(zap.AddCallerSkip(1))})
}

// redisLogger is go-redis's logger: its lines are reconnects and pool
// trouble. A failed dial goes to debug: orderd reports a Redis that does not
// answer itself (at start-up, in the reaper's and the health check's lines),
// once, not once per attempt.
type redisLogger struct{ log *zap.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	msg := strings.TrimSpace(fmt.Sprintf(format, v...))
	if strings.Contains(msg, "failed to dial") {
		l.log.Debug(msg)
		return
	}
	l.log.Warn(msg)
}

// mysqlLogger is the MySQL driver's logger: broken idle connections and the
// like, which database/sql retries.
type mysqlLogger struct{ log *zap.Logger }

func (l mysqlLogger) Print(v ...any) { l.log.Warn(strings.TrimSpace(fmt.Sprint(v...))) }
