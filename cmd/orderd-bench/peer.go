package main

import (
	"context"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/stock"
)

// peerDeps are what the benchmark's own daemons (naive.go, asynq.go) run on:
// a logger, Redis, the database and orderd's order service over them, to
// expire one order at a time.
type peerDeps struct {
	log   *zap.Logger
	rdb   redis.UniversalClient
	store *sqlstore.Store
	svc   *order.Service
}

func openPeer(ctx context.Context, redisURL, dbURL string) (*peerDeps, error) {
	log, err := zap.NewProduction()
	if err != nil {
		return nil, err
	}
	rdb, err := newRedis(redisURL)
	if err != nil {
		return nil, err
	}
	store, err := sqlstore.Open(ctx, dbURL)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	svc := order.NewService(store, stock.NewCounter(rdb, ""), nil, order.Config{Logger: zap.NewNop()})
	return &peerDeps{log: log, rdb: rdb, store: store, svc: svc}, nil
}

func (p *peerDeps) close() {
	p.store.Close()
	p.rdb.Close()
}
