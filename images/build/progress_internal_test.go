package build

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type recordedProgress struct{ events []string }

func (r *recordedProgress) StepStart(name string) { r.events = append(r.events, "start "+name) }

func (r *recordedProgress) StepDone(name string, d time.Duration, err error) {
	r.events = append(r.events, fmt.Sprintf("done %s %v %v", name, d, err))
}

// The output steps run in parallel, but the CLI's progress renders one
// running step: it must see them one after another, in table order, each
// with its own duration and error, however they interleave.
func TestSequencedProgressReportsParallelStepsInOrder(t *testing.T) {
	rec := &recordedProgress{}
	p := newSequencedProgress(rec, []string{"disk", "installer", "never started"})
	boom := errors.New("boom")

	p.StepStart("installer")
	p.StepStart("disk")
	p.StepDone("installer", 2*time.Second, boom)
	require.Equal(t, []string{"start disk"}, rec.events, "installer events passed before disk was done")

	p.StepDone("disk", time.Second, nil)
	p.finish()

	require.Equal(t, []string{
		"start disk", "done disk 1s <nil>",
		"start installer", "done installer 2s boom",
	}, rec.events)
}
