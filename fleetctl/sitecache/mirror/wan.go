package mirror

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"

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
