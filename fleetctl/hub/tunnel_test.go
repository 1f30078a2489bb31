package hub

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestNotWireGuard(t *testing.T) {
	for _, tc := range []struct {
		name string
		pkt  []byte
		want string
	}{
		{"keepalive", append([]byte{4, 0, 0, 0}, make([]byte, 28)...), ""},
		{"initiation", append([]byte{1, 0, 0, 0}, make([]byte, 144)...), ""},
		{"short", []byte{1}, "1-byte packet is shorter than any WireGuard message"},
		{"http", []byte("GET / HTTP/1.1"), "message type 71 is not WireGuard (1-4)"},
		{"reserved", []byte{4, 1, 0, 0}, "reserved bytes 010000 are not zero"},
		{"bad initiation", append([]byte{1, 0, 0, 0}, make([]byte, 10)...), "handshake initiation of 14 bytes (want 148)"},
		{"bad transport", append([]byte{4, 0, 0, 0}, make([]byte, 29)...), "transport message of 33 bytes (want >= 32, a multiple of 16)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, notWireGuard(tc.pkt))
		})
	}
}
