package addons_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/addons"
)

func TestSiteValues(t *testing.T) {
	good := `name: fra1
region: eu-central
metallb:
  addressPools: [10.20.0.0/28, 10.20.1.10-10.20.1.20]
otel:
  endpoint: https://otel.fra1.example:4317
thanos:
  objstoreSecret: thanos-bucket
`
	s, err := addons.ParseSite([]byte(good), "sites/fra1.yaml")
	require.NoError(t, err)
	assert.Equal(t, "fra1", s.Name)

	tests := []struct {
		name  string
		yaml  string
		field string
	}{
		{"missing name", "region: r\nmetallb: {addressPools: [10.0.0.0/30]}\notel: {endpoint: a:1}\nthanos: {objstoreSecret: s}\n", "site.name: required"},
		{"uppercase region", "name: a\nregion: EU\nmetallb: {addressPools: [10.0.0.0/30]}\notel: {endpoint: a:1}\nthanos: {objstoreSecret: s}\n", "site.region:"},
		{"no pools", "name: a\nregion: r\notel: {endpoint: a:1}\nthanos: {objstoreSecret: s}\n", "site.metallb.addressPools: required"},
		{"bad cidr", "name: a\nregion: r\nmetallb: {addressPools: [10.0.0.0/33]}\notel: {endpoint: a:1}\nthanos: {objstoreSecret: s}\n", "site.metallb.addressPools[0]:"},
		{"backwards range", "name: a\nregion: r\nmetallb: {addressPools: [10.0.0.0/30, 10.0.0.9-10.0.0.1]}\notel: {endpoint: a:1}\nthanos: {objstoreSecret: s}\n", "site.metallb.addressPools[1]:"},
		{"mixed family range", "name: a\nregion: r\nmetallb: {addressPools: [10.0.0.1-fd00::1]}\notel: {endpoint: a:1}\nthanos: {objstoreSecret: s}\n", "site.metallb.addressPools[0]:"},
		{"endpoint without port", "name: a\nregion: r\nmetallb: {addressPools: [10.0.0.0/30]}\notel: {endpoint: otel.example}\nthanos: {objstoreSecret: s}\n", "site.otel.endpoint:"},
		{"endpoint bad scheme", "name: a\nregion: r\nmetallb: {addressPools: [10.0.0.0/30]}\notel: {endpoint: 'grpc://otel:4317'}\nthanos: {objstoreSecret: s}\n", "site.otel.endpoint:"},
		{"missing secret", "name: a\nregion: r\nmetallb: {addressPools: [10.0.0.0/30]}\notel: {endpoint: a:1}\n", "site.thanos.objstoreSecret: required"},
		{"bad secret", "name: a\nregion: r\nmetallb: {addressPools: [10.0.0.0/30]}\notel: {endpoint: a:1}\nthanos: {objstoreSecret: Bucket_1}\n", "site.thanos.objstoreSecret:"},
		{"unknown field", "name: a\nregion: r\nzone: z\n", "zone"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := addons.ParseSite([]byte(tt.yaml), "sites/x.yaml")
			require.Error(t, err)
			assert.Contains(t, err.Error(), "sites/x.yaml")
			assert.Contains(t, err.Error(), tt.field)
		})
	}
}
