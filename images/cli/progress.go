package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Progress renders build steps: on a terminal a live elapsed-time line for
// steps that take over a second, elsewhere one line per finished step.
type Progress struct {
	w        io.Writer
	terminal bool

	mu   sync.Mutex
	stop chan struct{}
	done chan struct{}
}

// NewProgress writes to w; pass nil for silence.
func NewProgress(w io.Writer) *Progress {
	p := &Progress{w: w}

	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.terminal = true
		}
	}

	return p
}

// StepStart begins a step.
func (p *Progress) StepStart(name string) {
	if p == nil || p.w == nil {
		return
	}

	if !p.terminal {
		fmt.Fprintf(p.w, "  %s ...\n", name)

		return
	}

	p.mu.Lock()
	defer p.mu.Unlock()

	p.stop, p.done = make(chan struct{}), make(chan struct{})
	start := time.Now()

	go func(stop, done chan struct{}) {
		defer close(done)

		t := time.NewTicker(time.Second)
		defer t.Stop()

		for {
			select {
			case <-stop:
				return
			case <-t.C:
				fmt.Fprintf(p.w, "\r  %s ... %ds", name, int(time.Since(start).Seconds()))
			}
		}
	}(p.stop, p.done)
}

// StepDone ends a step.
func (p *Progress) StepDone(name string, d time.Duration, err error) {
	if p == nil || p.w == nil {
		return
	}

	p.mu.Lock()
	if p.stop != nil {
		close(p.stop)
		<-p.done
		p.stop = nil
	}
	p.mu.Unlock()

	status := "ok"
	if err != nil {
		status = "FAILED"
	}

	prefix := "  "
	if p.terminal {
		prefix = "\r\033[K  "
	}

	fmt.Fprintf(p.w, "%s%s: %s (%.2fs)\n", prefix, name, status, d.Seconds())
}
