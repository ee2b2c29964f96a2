package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/orderd/orderd/order/httpapi"
)

type tokenOptions struct {
	*globalOptions
	User  int64
	Admin bool
	TTL   time.Duration
}

func newTokenCmd(g *globalOptions) *cobra.Command {
	o := &tokenOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "token --user ID [--admin] [--ttl 24h]",
		Short: "Print a signed JWT for a user",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runToken(cmd, o)
		},
	}
	cmd.Flags().Int64Var(&o.User, "user", 0, "user id (a positive integer)")
	cmd.Flags().BoolVar(&o.Admin, "admin", false, "the token grants admin rights")
	cmd.Flags().DurationVar(&o.TTL, "ttl", 24*time.Hour, "how long the token is valid")
	return cmd
}

func runToken(cmd *cobra.Command, o *tokenOptions) error {
	secret, err := o.secret("it signs the tokens")
	if err != nil {
		return err
	}
	if o.User <= 0 {
		return usageErrorf("--user must be a positive integer user id")
	}
	if o.TTL <= 0 {
		return usageErrorf("--ttl must be positive, not %v", o.TTL)
	}
	tok, err := httpapi.IssueToken(secret, o.User, o.Admin, o.TTL)
	if err != nil {
		return runtimeError(err)
	}
	fmt.Fprintln(cmd.OutOrStdout(), tok)
	return nil
}
