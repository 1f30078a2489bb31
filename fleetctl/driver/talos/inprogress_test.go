package talos

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestInProgress(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.FailedPrecondition, "SIMULATED: upgrade in progress"), true},
		{status.Error(codes.FailedPrecondition, "upgrade: upgrade already in progress"), true},
		{errors.New("failed to acquire upgrade lock: locked"), true},
		{status.Error(codes.FailedPrecondition, "upgrade: pulling 10.0.2.100:5000/x: connection refused"), false},
		{status.Error(codes.FailedPrecondition, "upgrade: signature not in db"), false},
		{status.Error(codes.Unavailable, "connection refused"), false},
		{status.Error(codes.FailedPrecondition, "upgrade: STATE is not unlocked"), false},
	} {
		assert.Equal(t, tc.want, inProgress(tc.err), "%v", tc.err)
	}
}
