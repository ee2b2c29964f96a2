package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/orderd/orderd/order/sqlstore"
)

func newMigrateCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the database schema (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runtimeError(runMigrate(cmd.Context(), g))
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Print the schema version and the migrations still to apply",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runtimeError(runMigrateStatus(cmd.Context(), g, cmd.OutOrStdout()))
		},
	})
	return cmd
}

// openStore opens --db for migrate: wrong settings are exit 2.
func openStore(ctx context.Context, g *globalOptions) (*sqlstore.Store, error) {
	store, err := sqlstore.Open(ctx, g.DB)
	if err != nil {
		if sqlstore.IsConfigError(err) {
			return nil, usageErrorf("--db: %v", err)
		}
		return nil, fmt.Errorf("database (--db): %w", err)
	}
	return store, nil
}

func runMigrateStatus(ctx context.Context, g *globalOptions, out io.Writer) error {
	store, err := openStore(ctx, g)
	if err != nil {
		return err
	}
	defer store.Close()
	current, latest, err := store.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	if current >= latest {
		fmt.Fprintf(out, "schema version %d: up to date\n", current)
		return nil
	}
	fmt.Fprintf(out, "schema version %d of %d: %d migration(s) to apply; run `orderd migrate`\n", current, latest, latest-current)
	return nil
}

func runMigrate(ctx context.Context, g *globalOptions) error {
	store, err := openStore(ctx, g)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.CheckSchema(ctx); errors.Is(err, sqlstore.ErrSchemaNewer) {
		return usageErrorf("--db: %v", err)
	}
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
