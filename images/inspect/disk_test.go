package inspect

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const mib = 1 << 20

// buildDisk writes a GPT image shaped like the builder's: ESP (FAT32) with
// files, plus an empty STATE partition.
func buildDisk(t *testing.T, path string, files map[string][]byte) {
	t.Helper()

	d, err := diskfs.Create(path, 100*mib, diskfs.SectorSizeDefault)
	require.NoError(t, err)

	defer d.Close() //nolint:errcheck

	espStart, espEnd := uint64(2048), uint64(2048+64*mib/512-1)
	require.NoError(t, d.Partition(&gpt.Table{
		LogicalSectorSize:  512,
		PhysicalSectorSize: 512,
		ProtectiveMBR:      true,
		Partitions: []*gpt.Partition{
			{Index: 1, Start: espStart, End: espEnd, Type: gpt.EFISystemPartition, Name: "EFI"},
			{Index: 2, Start: espEnd + 1, End: espEnd + 16*mib/512, Type: gpt.LinuxFilesystem, Name: "STATE"},
		},
	}))

	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 1, FSType: filesystem.TypeFat32, VolumeLabel: "EFI"})
	require.NoError(t, err)

	for name, data := range files {
		require.NoError(t, fs.Mkdir("/"+filepath.Dir(name)))

		f, err := fs.OpenFile("/"+name, os.O_CREATE|os.O_RDWR)
		require.NoError(t, err)

		_, err = f.Write(data)
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
}

func TestInspectDisk(t *testing.T) {
	ks := testKeys(t)
	dir := t.TempDir()
	ukiKey, ukiCert := loadRSA(t, ks.UKISigningKey), loadCert(t, ks.UKISigningCert)

	uki := signPE(t, buildPE(t, ukiSections(t, loadRSA(t, ks.PCRSigningKey))), ukiKey, ukiCert)
	boot := signPE(t, buildPE(t, []testSection{{".text", bytes.Repeat([]byte{0xc3}, 100)}}), ukiKey, ukiCert)
	loaderConf := []byte("secure-boot-enroll if-safe\ndefault lab-*\ntimeout 0\n")

	dbAuth, err := os.ReadFile(ks.DBAuth)
	require.NoError(t, err)

	files := map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI":       boot,
		"EFI/Linux/lab-v1+3.efi":     uki,
		"loader/loader.conf":         loaderConf,
		"loader/keys/auto/db.auth":   dbAuth,
		"loader/entries/README.txt":  []byte("no entries: UKIs are found in EFI/Linux\n"),
		"EFI/Linux/notes-not-pe.efi": []byte("this is not a PE"),
	}

	img := filepath.Join(dir, "disk.raw")
	buildDisk(t, img, files)

	r, err := Inspect(img, Options{CertPath: ks.UKISigningCert})
	require.NoError(t, err)

	assert.Equal(t, KindDisk, r.Kind)
	require.NotNil(t, r.Disk)
	assert.Equal(t, 512, r.Disk.SectorSize)
	require.Len(t, r.Disk.Partitions, 2)

	esp, state := r.Disk.Partitions[0], r.Disk.Partitions[1]
	assert.Equal(t, Partition{Index: 1, Name: "EFI", Type: string(gpt.EFISystemPartition), TypeName: "EFI System",
		GUID: esp.GUID, Start: 2048, End: 2048 + 64*mib/512 - 1, Size: 64 * mib}, esp)
	assert.Equal(t, "STATE", state.Name)
	assert.Equal(t, "Linux filesystem", state.TypeName)
	assert.Equal(t, uint64(16*mib), state.Size)

	require.NotNil(t, r.Disk.ESP)
	assert.Equal(t, 1, r.Disk.ESP.Partition)

	got := map[string]int64{}
	for _, f := range r.Disk.ESP.Files {
		got[strings.ToLower(f.Path)] = f.Size
	}

	want := map[string]int64{}
	for name, data := range files {
		want[strings.ToLower(name)] = int64(len(data))
	}

	assert.Equal(t, want, got)

	require.Len(t, r.Disk.ESP.Binaries, 3)

	byPath := map[string]Binary{}
	for _, b := range r.Disk.ESP.Binaries {
		byPath[strings.ToLower(b.Path)] = b
	}

	u := byPath["efi/linux/lab-v1+3.efi"]
	require.NotNil(t, u.PE, u.Error)
	assert.Equal(t, "6.12.48-talos", u.PE.Uname)
	assert.True(t, u.PE.Verification.Verified, u.PE.Verification.Error)

	b := byPath["efi/boot/bootx64.efi"]
	require.NotNil(t, b.PE, b.Error)
	assert.True(t, b.PE.Verification.Verified)

	assert.Equal(t, "not a PE binary", byPath["efi/linux/notes-not-pe.efi"].Error)

	require.Len(t, r.Disk.ESP.AuthVars, 1)
	av := r.Disk.ESP.AuthVars[0]
	assert.Equal(t, []string{"CN=inspect-test UKI signing"}, av.Certs)
	require.NotNil(t, av.ListsCert)
	assert.True(t, *av.ListsCert)

	// One unreadable binary makes the whole disk fail verification.
	checked, ok, failures := r.Verification()
	assert.True(t, checked)
	assert.False(t, ok)
	require.Len(t, failures, 1)
	assert.Contains(t, failures[0], "notes-not-pe.efi: not a PE binary")

	var text bytes.Buffer
	require.NoError(t, r.WriteText(&text))

	for _, s := range []string{"partitions:", "STATE", "EFI System", "loader/loader.conf", "lab-v1+3.efi", "verification: FAILED"} {
		assert.Contains(t, text.String(), s)
	}
}

// A disk whose db.auth enrolls another certificate than the one that
// signed its binaries would refuse to boot after enrollment.
func TestInspectDiskDBWithoutSigner(t *testing.T) {
	ks := testKeys(t)
	dir := t.TempDir()
	rogueKey, rogue, roguePath := rogueCert(t, dir)

	dbAuth, err := os.ReadFile(ks.DBAuth)
	require.NoError(t, err)

	img := filepath.Join(dir, "disk.raw")
	buildDisk(t, img, map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI":     signPE(t, buildPE(t, []testSection{{".text", []byte{0xc3}}}), rogueKey, rogue),
		"loader/keys/auto/db.auth": dbAuth,
	})

	r, err := Inspect(img, Options{CertPath: roguePath})
	require.NoError(t, err)

	checked, ok, failures := r.Verification()
	assert.True(t, checked)
	assert.False(t, ok)
	require.Len(t, failures, 1)
	assert.Contains(t, failures[0], "loader/keys/auto/db.auth: does not enroll")
}

func TestInspectDiskWithoutESP(t *testing.T) {
	img := filepath.Join(t.TempDir(), "data.raw")

	d, err := diskfs.Create(img, 8*mib, diskfs.SectorSizeDefault)
	require.NoError(t, err)
	require.NoError(t, d.Partition(&gpt.Table{
		LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true,
		Partitions: []*gpt.Partition{{Index: 1, Start: 2048, End: 4095, Type: gpt.LinuxFilesystem, Name: "DATA"}},
	}))
	require.NoError(t, d.Close())

	r, err := Inspect(img, Options{CertPath: testKeys(t).UKISigningCert})
	require.NoError(t, err)
	assert.Nil(t, r.Disk.ESP)
	require.Len(t, r.Disk.Partitions, 1)

	checked, ok, failures := r.Verification()
	assert.True(t, checked)
	assert.False(t, ok, "asked to verify but nothing to verify must not pass")
	assert.Contains(t, failures[0], "no EFI binaries to verify")
}
