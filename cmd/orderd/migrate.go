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
		return fmt.Errorf("database (--db): %w", err)
	}
	defer store.Close()
	applied, err := store.Migrate(ctx)
	if err != nil {
		return err
	}
	g.log.Info("schema up to date", zap.Int64s("applied", applied))
	return nil
}
