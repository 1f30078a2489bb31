package inspect

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/labfleet/labfleet/images/keys"
)

// Disk describes a GPT disk image.
type Disk struct {
	// SectorSize is the logical sector size the table was read with.
	SectorSize int `json:"sectorSize"`
	// GUID is the disk GUID.
	GUID string `json:"guid"`
	// Partitions in table order (unused entries skipped).
	Partitions []Partition `json:"partitions"`
	// ESP is the first EFI System Partition's content, when there is one.
	ESP *ESP `json:"esp,omitempty"`
}

// Partition is one GPT entry.
type Partition struct {
	// Index is 1-based, as in /dev/sdaN.
	Index int    `json:"index"`
	Name  string `json:"name"`
	// Type is the type GUID; TypeName a readable name when known.
	Type     string `json:"type"`
	TypeName string `json:"typeName,omitempty"`
	GUID     string `json:"guid"`
	// Start and End are sectors (inclusive); Size is bytes.
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
	Size  uint64 `json:"size"`
}

// ESP lists the EFI System Partition.
type ESP struct {
	// Partition is the ESP's index.
	Partition int `json:"partition"`
	// Files are every regular file, sorted by path.
	Files []File `json:"files"`
	// Binaries are the reports of every .efi file under EFI/ (systemd-boot,
	// the UKIs in EFI/Linux).
	Binaries []Binary `json:"binaries"`
	// AuthVars are the signed EFI variable updates (*.auth, e.g.
	// loader/keys/auto/db.auth) and the certificates they enroll.
	AuthVars []AuthVar `json:"authVars,omitempty"`
}

// AuthVar is a signed EFI variable update found on the ESP.
type AuthVar struct {
	Path string `json:"path"`
	// Certs are the subjects of the X.509 entries it enrolls.
	Certs []string `json:"certs"`
	// ListsCert says whether it enrolls the certificate given to Inspect
	// (set for db.auth only: the db must hold the signer of the binaries).
	ListsCert *bool `json:"listsCert,omitempty"`
	// Error is set when the file does not parse.
	Error string `json:"error,omitempty"`
}

// File is a file on the ESP.
type File struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// Binary is an EFI binary found on the ESP and its report.
type Binary struct {
	Path string `json:"path"`
	PE   *PE    `json:"pe,omitempty"`
	// Error is set when the file could not be read as a PE binary.
	Error string `json:"error,omitempty"`
}

var typeNames = map[gpt.Type]string{
	gpt.EFISystemPartition:  "EFI System",
	gpt.LinuxFilesystem:     "Linux filesystem",
	gpt.LinuxExtendedBoot:   "Linux extended boot",
	gpt.LinuxDMCrypt:        "Linux dm-crypt",
	gpt.LinuxSwap:           "Linux swap",
	gpt.LinuxRootX86_64:     "Linux root (x86-64)",
	gpt.BIOSBoot:            "BIOS boot",
	gpt.MicrosoftBasicData:  "Microsoft basic data",
	gpt.LinuxLVM:            "Linux LVM",
	gpt.LinuxRAID:           "Linux RAID",
	gpt.MicrosoftReserved:   "Microsoft reserved",
	gpt.LinuxReserved:       "Linux reserved",
	gpt.LinuxServerData:     "Linux server data",
	gpt.LinuxHome:           "Linux home",
	gpt.LinuxRootArm64:      "Linux root (arm64)",
	gpt.MBRPartitionScheme:  "MBR partition scheme",
	gpt.IntelFastFlash:      "Intel fast flash",
	gpt.LenovoBootPartition: "Lenovo boot",
}

func inspectDisk(p string, cert *x509.Certificate, certPath string) (*Disk, error) {
	d, err := diskfs.Open(p, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("opening disk image: %w", err)
	}
	defer d.Close() //nolint:errcheck

	pt, err := d.GetPartitionTable()
	if err != nil {
		return nil, fmt.Errorf("reading partition table: %w", err)
	}

	table, ok := pt.(*gpt.Table)
	if !ok {
		return nil, fmt.Errorf("partition table is %s, not GPT", pt.Type())
	}

	out := &Disk{SectorSize: table.LogicalSectorSize, GUID: table.GUID, Partitions: []Partition{}}

	esp := 0

	for i, part := range table.Partitions {
		if part == nil || part.Type == gpt.Unused {
			continue
		}

		idx := part.Index
		if idx == 0 {
			idx = i + 1
		}

		out.Partitions = append(out.Partitions, Partition{
			Index:    idx,
			Name:     part.Name,
			Type:     strings.ToUpper(string(part.Type)),
			TypeName: typeNames[gpt.Type(strings.ToUpper(string(part.Type)))],
			GUID:     part.GUID,
			Start:    part.Start,
			End:      part.End,
			Size:     part.Size,
		})

		if esp == 0 && strings.EqualFold(string(part.Type), string(gpt.EFISystemPartition)) {
			esp = idx
		}
	}

	if esp == 0 {
		return out, nil
	}

	fsys, err := d.GetFilesystem(esp)
	if err != nil {
		return nil, fmt.Errorf("reading ESP (partition %d): %w", esp, err)
	}

	out.ESP = &ESP{Partition: esp, Files: []File{}, Binaries: []Binary{}}

	err = fs.WalkDir(fsys, ".", func(name string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		if de.IsDir() {
			return nil
		}

		info, err := de.Info()
		if err != nil {
			return err
		}

		out.ESP.Files = append(out.ESP.Files, File{Path: name, Size: info.Size()})

		if strings.EqualFold(path.Ext(name), ".auth") {
			out.ESP.AuthVars = append(out.ESP.AuthVars, inspectAuthVar(fsys, name, cert))
		}

		if strings.EqualFold(path.Ext(name), ".efi") && strings.HasPrefix(strings.ToUpper(name), "EFI/") {
			out.ESP.Binaries = append(out.ESP.Binaries, inspectESPBinary(fsys, name, cert, certPath))
		}

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing ESP files: %w", err)
	}

	sort.Slice(out.ESP.Files, func(i, j int) bool { return out.ESP.Files[i].Path < out.ESP.Files[j].Path })
	sort.Slice(out.ESP.Binaries, func(i, j int) bool { return out.ESP.Binaries[i].Path < out.ESP.Binaries[j].Path })

	return out, nil
}

// inspectESPBinary copies one EFI binary out of the FAT filesystem to a
// temporary file (PE parsing needs random access; a UKI is too big to hold
// in memory twice) and inspects it.
func inspectESPBinary(fsys fs.FS, name string, cert *x509.Certificate, certPath string) Binary {
	b := Binary{Path: name}

	pe, err := func() (*PE, error) {
		src, err := fsys.Open(name)
		if err != nil {
			return nil, err
		}
		defer src.Close() //nolint:errcheck

		tmp, err := os.CreateTemp("", "inspect-*.efi")
		if err != nil {
			return nil, err
		}

		defer os.Remove(tmp.Name()) //nolint:errcheck
		defer tmp.Close()           //nolint:errcheck

		if _, err := io.Copy(tmp, src); err != nil {
			return nil, err
		}

		magic := make([]byte, 2)
		if _, err := tmp.ReadAt(magic, 0); err != nil || string(magic) != "MZ" {
			return nil, errors.New("not a PE binary")
		}

		return inspectPE(tmp, cert, certPath)
	}()
	if err != nil {
		b.Error = err.Error()
	}

	b.PE = pe

	return b
}

// maxAuthSize bounds what is read of an .auth file; real ones are a few KiB
// (a db with Microsoft's certificates is still under 16 KiB).
const maxAuthSize = 1 << 20

func inspectAuthVar(fsys fs.FS, name string, cert *x509.Certificate) AuthVar {
	a := AuthVar{Path: name, Certs: []string{}}

	f, err := fsys.Open(name)
	if err != nil {
		a.Error = err.Error()

		return a
	}
	defer f.Close() //nolint:errcheck

	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(f, maxAuthSize)); err != nil {
		a.Error = err.Error()

		return a
	}

	av, err := keys.ParseAuthVar(buf.Bytes())
	if err != nil {
		a.Error = err.Error()

		return a
	}

	for _, c := range av.Certs {
		a.Certs = append(a.Certs, c.Subject.String())
	}

	if cert != nil && strings.EqualFold(path.Base(name), "db.auth") {
		lists := av.Contains(cert)
		a.ListsCert = &lists
	}

	return a
}
