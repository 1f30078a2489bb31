//go:build !linux

package keys

func exchange(_, _ string) error { return errNoExchange }
