package main

import (
	"context"

	"github.com/labfleet/labfleet/images/bake"
)

func newBaker(_ context.Context, root string) (*bake.Baker, error) {
	return bake.New(root), nil
}
