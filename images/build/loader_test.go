package build_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/build"
)

func TestLoaderConfPerEnrollMode(t *testing.T) {
	for _, tc := range []struct{ mode, want string }{
		{"if-safe", "timeout 0\ndefault lab-*\nsecure-boot-enroll if-safe\nconsole-mode keep\n"},
		{"force", "timeout 0\ndefault lab-*\nsecure-boot-enroll force\nconsole-mode keep\n"},
		{"off", "timeout 0\ndefault lab-*\nsecure-boot-enroll off\nconsole-mode keep\n"},
		// systemd-boot lists the "Enroll Secure Boot keys" entry only in its
		// menu, which timeout 0 hides: manual needs a visible menu.
		{"manual", "timeout 10\ndefault lab-*\nsecure-boot-enroll manual\nconsole-mode keep\n"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			require.Equal(t, tc.want, build.LoaderConf("lab", tc.mode))
		})
	}
}
