package sysinit

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Partition is a block device partition found through sysfs.
type Partition struct {
	Name   string // GPT partition name (PARTNAME)
	Device string // /dev/<DEVNAME>
	Disk   string // parent disk device, /dev/<disk>
}

// FindPartitions lists partitions with a GPT name by reading
// <sysRoot>/class/block/*/uevent.
func FindPartitions(sysRoot string) ([]Partition, error) {
	ents, err := os.ReadDir(filepath.Join(sysRoot, "class/block"))
	if err != nil {
		return nil, fmt.Errorf("listing block devices: %w", err)
	}

	var out []Partition

	for _, e := range ents {
		dir := filepath.Join(sysRoot, "class/block", e.Name())

		b, err := os.ReadFile(filepath.Join(dir, "uevent"))
		if err != nil {
			continue
		}

		kv := map[string]string{}

		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), "=")
			kv[k] = v
		}

		if kv["DEVTYPE"] != "partition" || kv["PARTNAME"] == "" {
			continue
		}

		p := Partition{Name: kv["PARTNAME"], Device: "/dev/" + kv["DEVNAME"]}

		// the partition's sysfs directory sits inside its disk's
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			p.Disk = "/dev/" + filepath.Base(filepath.Dir(real))
		}

		out = append(out, p)
	}

	return out, nil
}

// FindPartition returns the partition named name; with several (another
// disk carrying the same layout) the one on disk is preferred when given.
func FindPartition(parts []Partition, name, disk string) (Partition, error) {
	var found []Partition

	for _, p := range parts {
		if p.Name == name {
			found = append(found, p)
		}
	}

	switch {
	case len(found) == 0:
		return Partition{}, fmt.Errorf("no partition named %s", name)
	case len(found) == 1:
		return found[0], nil
	}

	for _, p := range found {
		if p.Disk == disk {
			return p, nil
		}
	}

	return Partition{}, fmt.Errorf("%d partitions named %s and none on %q", len(found), name, disk)
}
