package siderolink_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/siderolink"
)

// The kernel arguments read as Talos reads them (endpoint.Parse).
func TestFromCmdline(t *testing.T) {
	s, ok, err := siderolink.FromCmdline(map[string]string{
		"siderolink.api":       "grpc://hub.example:8099?jointoken=lfj_secret&grpc_tunnel=true",
		"talos.events.sink":    "[fdae:41e4:649b:9303::1]:8090",
		"talos.logging.kernel": "tcp://[fdae:41e4:649b:9303::1]:8092",
	})
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, siderolink.Settings{Host: "hub.example:8099", Insecure: true, JoinToken: "lfj_secret", Tunnel: true,
		EventsSink: "[fdae:41e4:649b:9303::1]:8090", KernelLog: "[fdae:41e4:649b:9303::1]:8092"}, s)
	assert.NotContains(t, s.String(), "lfj_secret", "String never shows the join token")

	s, err = siderolink.ParseAPIURL("https://hub.example?jointoken=x&grpc_tunnel=y")
	require.NoError(t, err)
	assert.Equal(t, "hub.example:443", s.Host, "https without a port is :443, as Talos")
	assert.False(t, s.Insecure)
	assert.True(t, s.Tunnel)

	s, err = siderolink.ParseAPIURL("hub.example:8099")
	require.NoError(t, err)
	assert.True(t, s.Insecure, "no scheme is grpc://, as Talos")
	assert.False(t, s.Tunnel)

	_, ok, err = siderolink.FromCmdline(map[string]string{"console": "ttyS0"})
	require.NoError(t, err)
	assert.False(t, ok, "no siderolink.api: no SideroLink")
}

// Bad input names the parameter and what to do, never the token.
func TestFromCmdlineErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		args map[string]string
		want string
	}{
		"scheme":    {map[string]string{"siderolink.api": "http://hub:80?jointoken=lfj_s"}, `kernel parameter siderolink.api: the SideroLink API URL has scheme "http": use grpc:// or https://`},
		"no port":   {map[string]string{"siderolink.api": "grpc://hub?jointoken=lfj_s"}, "kernel parameter siderolink.api: the SideroLink API URL (grpc://) has no port"},
		"bad url":   {map[string]string{"siderolink.api": "grpc://hu b:%zz?jointoken=lfj_s"}, "kernel parameter siderolink.api: the SideroLink API URL does not parse"},
		"sink":      {map[string]string{"siderolink.api": "hub:1", "talos.events.sink": "fdae::1"}, `kernel parameter talos.events.sink="fdae::1": want [ADDR]:PORT`},
		"kernellog": {map[string]string{"siderolink.api": "hub:1", "talos.logging.kernel": "udp://[fdae::1]:8092"}, `kernel parameter talos.logging.kernel="udp://[fdae::1]:8092": want tcp://[ADDR]:PORT`},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := siderolink.FromCmdline(tc.args)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "lfj_s")
		})
	}
}

// Talos v1.14's SideroLinkConfig document wins over the kernel argument;
// events and the kernel log stay the kernel arguments'.
func TestFromConfigDocument(t *testing.T) {
	cfg := []byte("version: v1alpha1\nmachine:\n  type: worker\n---\napiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://hub.example:8099?jointoken=doc\n")

	doc, docOK, err := siderolink.FromConfig(cfg)
	require.NoError(t, err)
	require.True(t, docOK)

	cmd, cmdOK, err := siderolink.FromCmdline(map[string]string{"siderolink.api": "grpc://other:1?jointoken=cmd", "talos.events.sink": "[fd00::1]:8090"})
	require.NoError(t, err)

	s, ok := siderolink.Merge(cmd, cmdOK, doc, docOK)
	require.True(t, ok)
	assert.Equal(t, "hub.example:8099", s.Host)
	assert.Equal(t, "doc", s.JoinToken)
	assert.Equal(t, "[fd00::1]:8090", s.EventsSink)

	_, _, err = siderolink.FromConfig([]byte("version: v1alpha1\n---\nkind: SideroLinkConfig\napiVersion: v1alpha1\n"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "machine config document 2 (SideroLinkConfig): apiUrl is empty")

	_, ok, err = siderolink.FromConfig([]byte("version: v1alpha1\n"))
	require.NoError(t, err)
	assert.False(t, ok)
}

// The unique token is made once and kept (on STATE), so the hub sees the
// same machine after every reboot.
func TestUniqueTokenKept(t *testing.T) {
	p := filepath.Join(t.TempDir(), "var/lib/labos/siderolink-unique-token")

	a, err := siderolink.UniqueToken(p)
	require.NoError(t, err)
	assert.Len(t, a, 32)

	b, err := siderolink.UniqueToken(p)
	require.NoError(t, err)
	assert.Equal(t, a, b)

	fi, err := os.Stat(p)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

func TestMachineUUID(t *testing.T) {
	p := filepath.Join(t.TempDir(), "product_uuid")
	require.NoError(t, os.WriteFile(p, []byte("1B4E28BA-2FA1-11D2-883F-0016D3CCA427\n"), 0o400))

	u, err := siderolink.MachineUUID(p)
	require.NoError(t, err)
	assert.Equal(t, "1b4e28ba-2fa1-11d2-883f-0016d3cca427", u)

	require.NoError(t, os.WriteFile(p, []byte("\n"), 0o400))
	_, err = siderolink.MachineUUID(p)
	assert.ErrorContains(t, err, p+" is empty")
}

func TestKmsgRecord(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

	m, err := siderolink.KmsgRecord("4,102,2100000,-;labos: hello", now)
	require.NoError(t, err)
	assert.Equal(t, "labos: hello", m["msg"])
	assert.Equal(t, "warn", m["talos-level"])
	assert.Equal(t, 102, m["seq"])
	assert.Equal(t, "2.1s", m["clock"])

	_, err = siderolink.KmsgRecord(" SUBSYSTEM=net", now)
	assert.ErrorContains(t, err, "no ';'")
}
