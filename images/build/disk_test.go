package build_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/siderolabs/talos/pkg/makefs"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/spec"
)

// cacheBaker bakes a small image cache tree in Talos's format.
type cacheBaker struct{ staticBaker }

func (c cacheBaker) Bake(_ context.Context, req build.BakeRequest) (*build.Baked, error) {
	tree := filepath.Join(req.WorkDir, "imagecache-talos")
	for p, data := range map[string]string{
		"blob/sha256-aa": "layer",
		"manifests/quay.io/cilium/cilium/reference/v1.18":  "{}",
		"manifests/quay.io/cilium/cilium/digest/sha256-bb": "{}",
	} {
		if err := os.MkdirAll(filepath.Join(tree, filepath.Dir(p)), 0o755); err != nil {
			return nil, err
		}

		if err := os.WriteFile(filepath.Join(tree, p), []byte(data), 0o644); err != nil {
			return nil, err
		}
	}

	return &build.Baked{MachineConfig: []byte(c.config), ImageCacheDir: tree}, nil
}

// The disk has Talos v1.14's layout for a UEFI image: EFI, META, IMAGECACHE
// (ext4, the Talos cache tree at its root), then the STATE labos seals, with
// Talos's type and label-derived GUIDs; the same inputs give the same bytes.
func TestDiskHasTalosLayout(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: e2fsprogs is required", tool)
		}
	}

	f := newFixture(t)
	f.def.Outputs = []string{spec.OutputUKI, spec.OutputDisk}

	var disks [][]byte

	for i := range 2 {
		res, err := build.Build(context.Background(), f.def, build.Options{
			Root: f.root, OutDir: filepath.Join(f.root, "_out", string(rune('a'+i))), Baker: cacheBaker{staticBaker{config: bootstrapConfig}},
			Force: true, ToolsPath: filepath.Join(f.assets, "tools", "bin"),
		})
		require.NoError(t, err)

		p := filepath.Join(res.Dir, "disk.raw")
		d, err := diskfs.Open(p, diskfs.WithOpenMode(diskfs.ReadOnly))
		require.NoError(t, err)

		pt, err := d.GetPartitionTable()
		require.NoError(t, err)
		table, ok := pt.(*gpt.Table)
		require.True(t, ok)
		require.Equal(t, strings.ToUpper(makefs.GUIDFromLabel("talos-image-disk").String()), strings.ToUpper(table.GUID))

		var names []string

		for _, part := range table.Partitions {
			names = append(names, part.Name)
			require.Equal(t, strings.ToUpper(makefs.GUIDFromLabel(part.Name).String()), strings.ToUpper(part.GUID), part.Name)

			wantType := gpt.LinuxFilesystem
			if part.Name == "EFI" {
				wantType = gpt.EFISystemPartition
			}

			require.Equal(t, strings.ToUpper(string(wantType)), strings.ToUpper(string(part.Type)), part.Name)
		}

		require.Equal(t, []string{"EFI", "META", "IMAGECACHE", "STATE"}, names)
		require.Equal(t, uint64(1<<20), table.Partitions[1].Size, "META is 1 MiB")

		// IMAGECACHE: ext4 labelled IMAGECACHE with the tree at its root.
		cache := table.Partitions[2]
		raw, err := os.ReadFile(p)
		require.NoError(t, err)
		require.NoError(t, d.Close())

		part := filepath.Join(t.TempDir(), "imagecache.ext4")
		require.NoError(t, os.WriteFile(part, raw[cache.Start*512:(cache.End+1)*512], 0o644))

		out, err := exec.Command("debugfs", "-R", "cat /manifests/quay.io/cilium/cilium/reference/v1.18", part).Output()
		require.NoError(t, err)
		require.Equal(t, "{}", string(out))

		out, err = exec.Command("dumpe2fs", "-h", part).CombinedOutput()
		require.NoError(t, err, string(out))
		require.Contains(t, string(out), "Filesystem volume name:   IMAGECACHE")
		require.Contains(t, string(out), "Filesystem UUID:          "+makefs.GUIDFromLabel("IMAGECACHE").String())

		disks = append(disks, raw[cache.Start*512:(cache.End+1)*512])
	}

	require.Equal(t, disks[0], disks[1], "IMAGECACHE is byte-identical across builds")
}

// A fixed disk.imageCacheMiB smaller than the cache is refused, naming the field.
func TestImageCacheTooSmall(t *testing.T) {
	f := newFixture(t)
	f.def.Outputs = []string{spec.OutputUKI, spec.OutputDisk}
	f.def.Disk.ImageCacheMiB = 1

	_, err := build.Build(context.Background(), f.def, build.Options{
		Root: f.root, OutDir: filepath.Join(f.root, "_out"), Baker: cacheBaker{staticBaker{config: bootstrapConfig}},
		Force: true, ToolsPath: filepath.Join(f.assets, "tools", "bin"),
	})
	require.ErrorContains(t, err, "disk.imageCacheMiB=1 is too small")
}
