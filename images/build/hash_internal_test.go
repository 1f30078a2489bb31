package build

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// hashFile skips reading holes (hashSparse) but must hash exactly the bytes
// a plain read returns: data at the start, between holes and at the end, a
// hole at the end, and a file that is all hole.
func TestHashFileSparseMatchesPlainRead(t *testing.T) {
	dir := t.TempDir()

	for name, layout := range map[string]func(*os.File){
		"data hole data hole": func(f *os.File) {
			f.WriteAt([]byte("start"), 0)         //nolint:errcheck
			f.WriteAt([]byte("middle"), 5<<20+17) //nolint:errcheck
			f.Truncate(12 << 20)                  //nolint:errcheck
		},
		"hole then data at the end": func(f *os.File) {
			f.WriteAt([]byte("end"), 3<<20-3) //nolint:errcheck
		},
		"all hole": func(f *os.File) { f.Truncate(2<<20 + 5) }, //nolint:errcheck
		"empty":    func(*os.File) {},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			f, err := os.Create(p)
			require.NoError(t, err)
			layout(f)
			require.NoError(t, f.Close())

			data, err := os.ReadFile(p)
			require.NoError(t, err)
			want := sha256.Sum256(data)

			got, n, err := hashFile(p)
			require.NoError(t, err)
			require.Equal(t, hex.EncodeToString(want[:]), got)
			require.Equal(t, int64(len(data)), n)
		})
	}
}
