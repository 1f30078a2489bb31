package node

import (
	"encoding/base64"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/api"
)

// A config whose registry mirror could not be used is refused when it is
// applied (InvalidArgument, naming the document and field), not at the
// first pull inside a maintenance window.
func TestApplyRefusesBadMirror(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString([]byte("x"))
	base := "version: v1alpha1\nmachine:\n  ca: {crt: " + b64 + ", key: " + b64 + "}\n"

	_, err := parseComplete([]byte(base + "---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: ghcr.io\nendpoints: [{url: 'http://[fdae:1::1]:5000'}]\n"))
	require.NoError(t, err)

	n := &Node{}
	err = n.ApplyConfig(t.Context(), []byte(base+"---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: ghcr.io\nendpoints: [{url: 'file:///etc'}]\n"), true)
	require.True(t, errors.Is(err, api.ErrInvalidConfig), "%v", err)
	require.ErrorContains(t, err, `registry mirrors: machine config document 2 (RegistryMirrorConfig) (ghcr.io): endpoints[0]: "file:///etc": want an http:// or https:// URL`)
}
