package build

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// resignLayer returns l with every EFI binary under usr/install/ passed
// through resign; a layer without one is returned as it is, so the
// installer-base's layers keep their digests. Headers (names, modes, owners,
// mtimes) are kept, only sizes follow the new contents.
func resignLayer(l v1.Layer, resign func([]byte) ([]byte, error)) (v1.Layer, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("reading installer layer: %w", err)
	}
	defer rc.Close() //nolint:errcheck

	var (
		out     bytes.Buffer
		changed bool
	)

	tr := tar.NewReader(rc)
	tw := tar.NewWriter(&out)

	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return nil, fmt.Errorf("reading installer layer: %w", err)
		}

		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("reading %s in installer layer: %w", hdr.Name, err)
		}

		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if hdr.Typeflag == tar.TypeReg && strings.HasPrefix(name, "usr/install/") && strings.HasSuffix(name, ".efi") {
			if data, err = resign(data); err != nil {
				return nil, fmt.Errorf("re-signing %s: %w", name, err)
			}

			changed = true
		}

		hdr.Size = int64(len(data))

		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("writing installer layer: %w", err)
		}

		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("writing installer layer: %w", err)
		}
	}

	if !changed {
		return l, nil
	}

	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("writing installer layer: %w", err)
	}

	b := out.Bytes()

	nl, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		return nil, fmt.Errorf("assembling installer layer: %w", err)
	}

	return nl, nil
}
