package siderolink

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	slapi "github.com/siderolabs/siderolink/api/events"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func (l *Link) dial(ctx context.Context, addr string) (net.Conn, error) {
	st := l.Stack()
	if st == nil {
		return nil, errors.New("siderolink: the link is not up")
	}

	return st.DialContext(ctx, "tcp", addr)
}

// Publish sends one event to the event sink (talos.events.sink) through
// the link, as Talos's event sink controller does (gRPC
// EventSinkService/Publish, the event as an Any).
func (l *Link) Publish(ctx context.Context, id string, ev proto.Message) error {
	sink := l.opts.Settings.EventsSink
	if sink == "" {
		return nil
	}

	cc, err := grpc.NewClient(sink, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(l.dial))
	if err != nil {
		return fmt.Errorf("dialing the event sink %s: %w", sink, err)
	}
	defer cc.Close() //nolint:errcheck

	data, err := anypb.New(ev)
	if err != nil {
		return fmt.Errorf("encoding event %s: %w", id, err)
	}

	if _, err := slapi.NewEventSinkServiceClient(cc).Publish(ctx, &slapi.EventRequest{Id: id, Data: data}); err != nil {
		return fmt.Errorf("publishing event %s to %s: %w", id, sink, err)
	}

	return nil
}

// SendLogs writes JSON log messages, one a line, to the log receiver
// (talos.logging.kernel) through the link.
func (l *Link) SendLogs(ctx context.Context, msgs ...any) error {
	dst := l.opts.Settings.KernelLog
	if dst == "" {
		return nil
	}

	c, err := l.dial(ctx, dst)
	if err != nil {
		return fmt.Errorf("dialing the log receiver %s: %w", dst, err)
	}
	defer c.Close() //nolint:errcheck

	enc := json.NewEncoder(c)

	for _, m := range msgs {
		if err := enc.Encode(m); err != nil {
			return fmt.Errorf("sending to the log receiver %s: %w", dst, err)
		}
	}

	return nil
}

// Report is the labfleet-report log message (see docs/contracts.md).
type Report struct {
	ImageVersion   string `json:"imageVersion"`
	SecureBoot     string `json:"secureBoot"`
	DiskEncryption string `json:"diskEncryption"`
}

// SendReport sends the node's report to the log receiver.
func (l *Link) SendReport(ctx context.Context, r Report) error {
	return l.SendLogs(ctx, map[string]Report{"labfleet-report": r})
}

// KmsgRecord turns one /dev/kmsg record ("PRI,SEQ,USEC,FLAGS;text") into
// the JSON message Talos's kernel log sender writes (facility, priority,
// seq, clock, msg, talos-level, talos-time).
func KmsgRecord(rec string, now time.Time) (map[string]any, error) {
	head, text, ok := strings.Cut(strings.TrimRight(rec, "\n"), ";")
	if !ok {
		return nil, fmt.Errorf("kmsg record %q: no ';'", rec)
	}

	f := strings.Split(head, ",")
	if len(f) < 3 {
		return nil, fmt.Errorf("kmsg record %q: want PRI,SEQ,USEC", rec)
	}

	pri, err1 := strconv.Atoi(f[0])
	seq, err2 := strconv.Atoi(f[1])
	usec, err3 := strconv.ParseInt(f[2], 10, 64)

	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("kmsg record %q: %w", rec, err)
	}

	levels := []string{"emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"}

	return map[string]any{
		"facility":    pri >> 3,
		"priority":    pri & 7,
		"seq":         seq,
		"clock":       time.Duration(usec * int64(time.Microsecond)).String(),
		"msg":         text,
		"talos-level": levels[pri&7],
		"talos-time":  now.UTC().Format(time.RFC3339Nano),
	}, nil
}

// ForwardKernelLog copies kmsg records from r (/dev/kmsg, one record a
// read) to the log receiver until r ends or ctx ends; a receiver that
// goes away is dialled again (records read meanwhile are dropped, as
// Talos drops them when its sender's buffer is full).
func (l *Link) ForwardKernelLog(ctx context.Context, r io.Reader) error {
	if l.opts.Settings.KernelLog == "" {
		return nil
	}

	var (
		c   net.Conn
		enc *json.Encoder
	)

	defer func() {
		if c != nil {
			c.Close() //nolint:errcheck
		}
	}()

	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 8192), 1<<20)

	for sc.Scan() && ctx.Err() == nil {
		msg, err := KmsgRecord(sc.Text(), time.Now())
		if err != nil {
			continue // continuation lines (" KEY=value") and oddities
		}

		if c == nil {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			c, err = l.dial(dctx, l.opts.Settings.KernelLog)
			cancel()

			if err != nil {
				c = nil

				continue
			}

			enc = json.NewEncoder(c)
		}

		if err := enc.Encode(msg); err != nil {
			c.Close() //nolint:errcheck
			c = nil
		}
	}

	return sc.Err()
}
