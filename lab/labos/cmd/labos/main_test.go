package main

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// labos mounts over /proc, /sys, /dev: it must never run outside PID 1.
func TestRefusesOutsidePID1(t *testing.T) {
	cmd := rootCmd()
	cmd.SetArgs([]string{})

	err := cmd.ExecuteContext(context.Background())
	require.ErrorContains(t, err, "must run as PID 1")
}
