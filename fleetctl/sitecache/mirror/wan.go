package mirror

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// wanBurst bounds one read through the limiter: small enough that the cap
// holds over a fraction of a second, large enough not to cost CPU.
const wanBurst = 32 << 10

// wanTransport is every request the cache sends to the regional source:
// it counts the bytes of each response body and, when a cap is set, paces
// their reading with a token bucket. Pacing the reads paces the sender
// through TCP flow control, so the site's link never carries more than the
// cap for this cache however many nodes ask at once.
type wanTransport struct {
	base    http.RoundTripper
	limiter *rate.Limiter // nil: no cap
	bytes   atomic.Int64
}

func newWANTransport(base http.RoundTripper, bytesPerSecond int64) *wanTransport {
	t := &wanTransport{base: base}
	if bytesPerSecond > 0 {
		t.limiter = rate.NewLimiter(rate.Limit(bytesPerSecond), wanBurst)
	}

	return t
}

func (t *wanTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}

	resp.Body = &wanBody{rc: resp.Body, t: t, ctx: req.Context()}

	return resp, nil
}

type wanBody struct {
	rc  io.ReadCloser
	t   *wanTransport
	ctx context.Context
}

func (b *wanBody) Read(p []byte) (int, error) {
	if len(p) > wanBurst {
		p = p[:wanBurst]
	}

	n, err := b.rc.Read(p)
	if n > 0 {
		b.t.bytes.Add(int64(n))

		if b.t.limiter != nil {
			if werr := b.t.limiter.WaitN(b.ctx, n); werr != nil && err == nil {
				err = werr
			}
		}
	}

	return n, err
}

func (b *wanBody) Close() error { return b.rc.Close() }

// defaultTransport is http.DefaultTransport's settings with, under a cap,
// a small socket receive buffer: reads are paced, but the kernel would
// otherwise accept (and the link carry) several MiB ahead of them at full
// speed before TCP's window closes, which breaks the cap for seconds and
// loses those bytes when the cache is killed.
func defaultTransport(bytesPerSecond int64) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone() //nolint:forcetypeassert // the standard library's own type

	if bytesPerSecond <= 0 {
		return t
	}

	// A quarter second of data (the kernel doubles it): enough window to
	// reach the cap over a 250 ms round trip, little enough to hold.
	rcvbuf := int(max(32<<10, min(bytesPerSecond/4, 4<<20)))

	d := &net.Dialer{
		Timeout: 30 * time.Second, KeepAlive: 30 * time.Second,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf) }); err != nil {
				return err
			}

			return serr
		},
	}
	t.DialContext = d.DialContext

	return t
}
