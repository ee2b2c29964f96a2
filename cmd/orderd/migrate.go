package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/orderd/orderd/order/sqlstore"
)

func newMigrateCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the database schema (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runtimeError(runMigrate(cmd.Context(), g))
		},
	}
}

func runMigrate(ctx context.Context, g *globalOptions) error {
	store, err := sqlstore.Open(ctx, g.DB)
	if err != nil {
		if sqlstore.IsConfigError(err) {
			return usageErrorf("--db: %v", err)
		}
		return fmt.Errorf("database (--db): %w", err)
	}
	defer store.Close()
	applied, err := store.Migrate(ctx)
	if err != nil {
		return err
	}
	version, _, err := store.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		g.log.Info("schema already up to date: nothing to apply", zap.Int64("version", version))
		return nil
	}
	g.log.Info("schema migrated", zap.Int64s("applied", applied), zap.Int64("version", version))
	return nil
}
