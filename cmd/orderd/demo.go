package main

import "github.com/spf13/cobra"

func newDemoCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{Use: "demo", Short: "A self-contained tour", RunE: func(*cobra.Command, []string) error { return nil }}
}
