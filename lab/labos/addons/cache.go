package addons

import (
	"fmt"
	"io"
	"os"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

// ReadCacheIndex reads index.json from the root of the FAT image cache
// partition without mounting it (read-only).
func ReadCacheIndex(device string) ([]byte, error) {
	f, err := os.Open(device)
	if err != nil {
		return nil, fmt.Errorf("opening image cache: %w", err)
	}

	size, err := f.Seek(0, io.SeekEnd)
	f.Close() //nolint:errcheck

	if err != nil {
		return nil, fmt.Errorf("sizing image cache: %w", err)
	}

	b, err := file.OpenFromPath(device, true)
	if err != nil {
		return nil, fmt.Errorf("opening image cache: %w", err)
	}
	defer b.Close() //nolint:errcheck

	fs, err := fat32.Read(b, size, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("reading image cache filesystem: %w", err)
	}

	idx, err := fs.OpenFile("/index.json", os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("image cache has no index.json: %w", err)
	}
	defer idx.Close() //nolint:errcheck

	return io.ReadAll(idx)
}
