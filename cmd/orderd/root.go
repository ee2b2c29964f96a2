package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/httpapi"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/stock"
)

// globalOptions are the flags every subcommand takes (README.md, "Reference").
type globalOptions struct {
	RedisURL       string
	DB             string
	KeyPrefix      string
	PayTimeout     time.Duration
	ConfirmTimeout time.Duration
	SweepInterval  time.Duration
	// TransitionsMaxLen caps the transitions stream; 0 turns it off.
	TransitionsMaxLen int64
	JWTSecret         string
	LogFormat         string
	LogLevel          string
	// Config is the configuration file (listen and status; config.go).
	Config string

	config *configFile // read from Config, when set
	redis  redisTarget
	log    *zap.Logger
}

// newRootCmd returns the command tree and the options it fills in (whose
// logger exists once a subcommand has started).
func newRootCmd() (*cobra.Command, *globalOptions) {
	opts := &globalOptions{}
	root := &cobra.Command{
		Use:   "orderd",
		Short: "Close unpaid orders and confirm receipt of shipped ones on time, from Redis key expiry",
		Long: `orderd closes unpaid orders and confirms receipt of shipped ones on time.

Every flag can also be set in the environment as ORDERD_ + the flag name in
upper case with - as _ (ORDERD_REDIS_URL, ORDERD_JWT_SECRET, …); a flag given
on the command line wins.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return opts.complete(cmd)
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErrorf("%v", err) })
	f := root.PersistentFlags()
	f.StringVar(&opts.RedisURL, "redis-url", "redis://127.0.0.1:6379/0", "Redis URL; the path's number is the database")
	f.StringVar(&opts.DB, "db", "sqlite:orderd.db", "database: sqlite:PATH or mysql://user:pass@host:port/dbname (host:port,host:port,… for the nodes of a Galera cluster)")
	f.StringVar(&opts.KeyPrefix, "key-prefix", "", "prepended to every key orderd writes and stripped from expired keys it reads")
	f.DurationVar(&opts.PayTimeout, "pay-timeout", 15*time.Minute, "time to pay after ordering")
	f.DurationVar(&opts.ConfirmTimeout, "confirm-timeout", 24*time.Hour, "time after shipping until receipt is confirmed automatically")
	f.DurationVar(&opts.SweepInterval, "sweep-interval", 30*time.Second, "how often the daemon checks the database for overdue orders")
	f.Int64Var(&opts.TransitionsMaxLen, "transitions-maxlen", 1_000_000, "approximate cap of the transitions stream <prefix>orderd:transitions (0 turns it off)")
	f.StringVar(&opts.JWTSecret, "jwt-secret", "", "HMAC secret for tokens (required by serve and token)")
	f.StringVar(&opts.LogFormat, "log-format", "", "log encoder: console or json (default console on a terminal, json otherwise)")
	f.StringVar(&opts.LogLevel, "log-level", "info", "log level: debug, info, warn, error")

	root.AddCommand(
		newMigrateCmd(opts),
		newServeCmd(opts),
		newListenCmd(opts),
		newStatusCmd(opts),
		newOrdersCmd(opts),
		newConsoleCmd(opts),
		newTokenCmd(opts),
		newDemoCmd(opts),
		newVersionCmd(),
	)
	return root, opts
}

// complete reads the environment, then the configuration file, for flags
// not given, then checks them.
func (o *globalOptions) complete(cmd *cobra.Command) error {
	var envErr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || envErr != nil {
			return
		}
		name := "ORDERD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if err := cmd.Flags().Set(f.Name, v); err != nil {
				envErr = usageErrorf("%s (for --%s): %v", name, f.Name, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if o.Config != "" {
		cf, err := loadConfig(o.Config, configKeys(cmd.Root()))
		if err != nil {
			return usageErrorf("%v", err)
		}
		if err := cf.apply(cmd); err != nil {
			return usageErrorf("%v", err)
		}
		o.config = cf
	}
	var err error
	if o.redis, err = parseRedisURL(o.RedisURL); err != nil {
		return usageErrorf("--redis-url %q: %v", o.RedisURL, err)
	}
	if _, err := sqlstore.ParseURL(o.DB); err != nil {
		return usageErrorf("--db: %v", err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"pay-timeout", o.PayTimeout}, {"confirm-timeout", o.ConfirmTimeout}, {"sweep-interval", o.SweepInterval}} {
		if d.v <= 0 {
			return usageErrorf("--%s must be positive, not %v", d.name, d.v)
		}
	}
	if o.TransitionsMaxLen < 0 {
		return usageErrorf("--transitions-maxlen must be 0 (off) or positive, not %d", o.TransitionsMaxLen)
	}
	if o.LogFormat == "" {
		o.LogFormat = "json"
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			o.LogFormat = "console"
		}
	}
	if o.log, err = newLogger(o.LogFormat, o.LogLevel); err != nil {
		return err
	}
	routeLibraryLogs(o.log)
	return nil
}

func newLogger(format, level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, usageErrorf("--log-level %q: use debug, info, warn or error", level)
	}
	var cfg zap.Config
	switch format {
	case "json":
		cfg = zap.NewProductionConfig()
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
		// Stack traces only where a bug is: a recovered panic logs its own.
		cfg.DisableStacktrace = true
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.DisableStacktrace = true
	default:
		return nil, usageErrorf("--log-format %q: use console or json", format)
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Sampling = nil
	return cfg.Build()
}

// deps are the parts serve, listen and demo share.
type deps struct {
	rdb     redis.UniversalClient
	store   *sqlstore.Store
	sched   *expiry.Scheduler
	counter *stock.Counter
	// giveBacks retries stock give-backs that failed (run by startGiveBacks).
	giveBacks *stock.GiveBacks
}

// open connects to Redis and the database and checks the schema. What only
// the servers can tell about the settings (a password refused, a database or
// Redis DB that does not exist, a schema older than the binary) is a
// configuration error (exit 2); a server that does not answer is a runtime
// failure (exit 1).
func (o *globalOptions) open(ctx context.Context) (*deps, error) {
	return o.openWith(ctx, sqlstore.Options{})
}

// serverSessions bounds the database sessions of serve and listen, so that
// a process frozen inside a transaction (a GC pause, a VM freeze, SIGSTOP)
// stalls the others for about 2 s, not for as long as it is frozen: MariaDB
// ends a transaction idle for 2 s (rolling it back, freeing its locks), a
// lock is waited for 5 s at most, a statement runs 30 s at most. Their
// transactions run again are counted (orderd_db_retries_total).
var serverSessions = sqlstore.Options{TxIdleTimeout: 2 * time.Second, LockWait: 5 * time.Second, StatementTimeout: 30 * time.Second,
	OnRetry: countDBRetry}

// openWith is open with the database sessions tuned by opts.
func (o *globalOptions) openWith(ctx context.Context, opts sqlstore.Options) (*deps, error) {
	rdb := o.redis.client()
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pingCtx).Err(); err != nil {
		rdb.Close()
		if redisRefuses(err) {
			return nil, usageErrorf("--redis-url: Redis at %s refuses the settings: %v", o.redis, err)
		}
		return nil, runtimeError(fmt.Errorf("redis at %s does not answer (--redis-url): %w", o.redis, err))
	}
	store, err := sqlstore.OpenWith(ctx, o.DB, opts)
	if err != nil {
		rdb.Close()
		if sqlstore.IsConfigError(err) {
			return nil, usageErrorf("--db: %v", err)
		}
		return nil, runtimeError(fmt.Errorf("database (--db): %w", err))
	}
	if err := store.CheckSchema(ctx); err != nil {
		rdb.Close()
		store.Close()
		if errors.Is(err, sqlstore.ErrSchemaOutdated) || errors.Is(err, sqlstore.ErrSchemaNewer) {
			return nil, usageErrorf("--db: %v", err)
		}
		return nil, runtimeError(err)
	}
	// With the stream on, every transition is recorded in the outbox in its
	// own transaction, and a relay appends it to the stream.
	store.SetOutbox(o.TransitionsMaxLen > 0)
	keys := o.keys()
	return &deps{
		rdb:       rdb,
		store:     store,
		sched:     expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: keys.Prefix, Index: keys.DueIndex()}),
		counter:   stock.NewCounter(rdb, keys.Stock()),
		giveBacks: &stock.GiveBacks{Prefix: keys.Stock(), Open: o.redis.client, Logger: o.log},
	}, nil
}

// redisRefuses reports whether Redis answered a PING with an error that
// the settings cause (a wrong password, a DB index out of range), as opposed
// to a passing state (loading its data, a failover) or no answer at all.
func redisRefuses(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	for _, passing := range []string{"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"} {
		if strings.HasPrefix(rerr.Error(), passing) {
			return false
		}
	}
	return true
}

// schemaCheckInterval is how often a running serve or listen reads the
// schema version, to stop once a newer orderd has migrated the database.
const schemaCheckInterval = 5 * time.Second

// watchSchema returns a context that ends, with an error wrapping
// sqlstore.ErrSchemaNewer as its cause, once the database is migrated past
// this binary; schemaError reads it back after the command's parts stopped.
func (d *deps) watchSchema(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		if err := d.store.WatchSchema(ctx, schemaCheckInterval); err != nil {
			cancel(err)
		}
	}()
	return ctx, func() { cancel(nil) }
}

// schemaError returns the runtime failure (exit 1) of a process that
// stopped because the schema moved past it, or nil.
func schemaError(ctx context.Context) error {
	if err := context.Cause(ctx); errors.Is(err, sqlstore.ErrSchemaNewer) {
		return runtimeError(err)
	}
	return nil
}

// startGiveBacks runs d.giveBacks until the function it returns is called
// (which waits for it).
func (d *deps) startGiveBacks() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.giveBacks.Run(ctx) }()
	return func() { cancel(); <-done }
}

func (d *deps) close() {
	d.rdb.Close()
	d.store.Close()
}

// health reports whether Redis and the database answer.
func (d *deps) health(ctx context.Context) httpapi.Problems {
	p := httpapi.Problems{}
	if err := d.rdb.Ping(ctx).Err(); err != nil {
		p["redis"] = fmt.Sprintf("Redis does not answer: %v", err)
	}
	if err := d.store.Ping(ctx); err != nil {
		p["database"] = fmt.Sprintf("the database does not answer: %v", err)
	}
	return p
}

// minSecret is the shortest --jwt-secret taken: HS256 wants a key of at
// least its hash's 32 bytes, and a short one can be guessed offline from any
// token.
const minSecret = 32

// secret returns --jwt-secret, refusing (exit 2) one that is missing or
// shorter than 32 bytes; what says who needs it.
func (o *globalOptions) secret(what string) ([]byte, error) {
	switch {
	case o.JWTSecret == "":
		return nil, usageErrorf("--jwt-secret (or ORDERD_JWT_SECRET) is required: %s", what)
	case len(o.JWTSecret) < minSecret:
		return nil, usageErrorf("--jwt-secret must have at least %d bytes, not %d: use e.g. $(head -c 32 /dev/urandom | base64)", minSecret, len(o.JWTSecret))
	}
	return []byte(o.JWTSecret), nil
}

// keys names every Redis key orderd writes, under --key-prefix.
func (o *globalOptions) keys() order.Keys { return order.Keys{Prefix: o.KeyPrefix} }

func (o *globalOptions) serviceConfig(onTransition func(order.Transition)) order.Config {
	return order.Config{
		PayTimeout:     o.PayTimeout,
		ConfirmTimeout: o.ConfirmTimeout,
		Keys:           o.keys(),
		Logger:         o.log,
		OnTransition:   onTransition,
	}
}
