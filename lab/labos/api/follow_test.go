package api_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/labfleet/labfleet/lab/labos/api"
)

// Follow hands the hub's event sink every event of the boot so far, in
// order, then each new one; an error from the sender ends it.
func TestFollowSendsPastThenNewEvents(t *testing.T) {
	ev := api.NewEvents()
	ev.Publish("", &machine.MachineStatusEvent{Stage: machine.MachineStatusEvent_BOOTING})
	ev.Publish("", &machine.SequenceEvent{Sequence: "boot"})

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	var (
		got  []string
		ids  = map[string]bool{}
		stop = errors.New("enough")
	)

	done := make(chan error, 1)

	go func() {
		done <- ev.Follow(ctx, func(id string, msg proto.Message) error {
			ids[id] = true
			got = append(got, string(msg.ProtoReflect().Descriptor().Name()))

			if len(got) == 3 {
				return stop
			}

			return nil
		})
	}()

	time.Sleep(50 * time.Millisecond)
	ev.Publish("", &machine.MachineStatusEvent{Stage: machine.MachineStatusEvent_RUNNING})

	require.ErrorIs(t, <-done, stop)
	require.Equal(t, []string{"MachineStatusEvent", "SequenceEvent", "MachineStatusEvent"}, got)
	require.Len(t, ids, 3, "each event keeps its own ID")
}
