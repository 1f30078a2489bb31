package overview

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

// ServerTLS builds the TLS configuration of c: the server certificate, and
// client certificates verified against tls.clientCA when one is given
// (optional: a browser without one logs in with a token).
func ServerTLS(c *TLSConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("loading tls.cert %s / tls.key: %w", c.Cert, err)
	}

	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}

	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("reading tls.clientCA: %w", err)
		}

		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.clientCA %s: no PEM certificate in it", c.ClientCA)
		}

		cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}

	return cfg, nil
}

// Listen opens addr for the overview: with TLS when cfg has it; plain HTTP
// only on a loopback address (a page on one machine), so a token never
// crosses a network in clear text. It returns the listener and the URL to open.
func Listen(addr string, cfg *Config) (net.Listener, string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("--listen %q: %w", addr, err)
	}

	ip := net.ParseIP(host)
	loopback := host == "localhost" || (ip != nil && ip.IsLoopback())

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("listening on %s: %w", addr, err)
	}

	if cfg.TLS == nil {
		if !loopback {
			ln.Close() //nolint:errcheck

			return nil, "", errors.New("--listen " + addr + ": not a loopback address, so the config needs tls (cert, key): tokens must not cross a network in clear text")
		}

		return ln, "http://" + ln.Addr().String() + "/", nil
	}

	tc, err := ServerTLS(cfg.TLS)
	if err != nil {
		ln.Close() //nolint:errcheck

		return nil, "", err
	}

	return tls.NewListener(ln, tc), "https://" + ln.Addr().String() + "/", nil
}

// Serve serves h on ln until ctx ends, then shuts down gracefully.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	// Requests derive from ctx, so live streams end when the server stops.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}

	errc := make(chan error, 1)

	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("serving the overview: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()

		srv.Shutdown(sctx) //nolint:errcheck // SSE streams end with the context; shutdown errors change nothing

		return nil
	}
}
