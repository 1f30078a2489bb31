package labbase

import (
	"bytes"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// tree is the initramfs content, kept in memory so it can be written in a
// fixed order whatever order the steps added files in.
type tree struct {
	nodes map[string]node
}

type nodeKind int

const (
	kindDir nodeKind = iota
	kindFile
	kindCharDev
)

type node struct {
	kind         nodeKind
	mode         uint64
	data         []byte
	major, minor uint64
}

func newTree() *tree { return &tree{nodes: map[string]node{}} }

func (t *tree) parents(name string) {
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		if _, ok := t.nodes[d]; !ok {
			t.nodes[d] = node{kind: kindDir, mode: 0o755}
		}
	}
}

func (t *tree) dir(name string, mode uint64) {
	name = strings.TrimPrefix(path.Clean(name), "/")
	t.parents(name)
	t.nodes[name] = node{kind: kindDir, mode: mode}
}

func (t *tree) file(name string, data []byte, mode uint64) {
	name = strings.TrimPrefix(path.Clean(name), "/")
	t.parents(name)
	t.nodes[name] = node{kind: kindFile, mode: mode, data: data}
}

func (t *tree) charDev(name string, mode, major, minor uint64) {
	name = strings.TrimPrefix(path.Clean(name), "/")
	t.parents(name)
	t.nodes[name] = node{kind: kindCharDev, mode: mode, major: major, minor: minor}
}

// records renders the tree as cpio records: sorted by name (a parent sorts
// before its children), fixed owners and times, inode numbers by position so
// the kernel never mistakes two files for hard links.
func (t *tree) records() []cpio.Record {
	names := make([]string, 0, len(t.nodes))
	for n := range t.nodes {
		names = append(names, n)
	}

	sort.Strings(names)

	recs := make([]cpio.Record, 0, len(names))

	for i, name := range names {
		n := t.nodes[name]

		var r cpio.Record

		switch n.kind {
		case kindDir:
			r = cpio.Directory(name, n.mode)
		case kindCharDev:
			r = cpio.CharDev(name, n.mode, n.major, n.minor)
		case kindFile:
			r = cpio.StaticRecord(n.data, cpio.Info{Mode: cpio.S_IFREG | n.mode, Name: name})
		}

		r.Ino = uint64(i + 1)
		r.NLink = 1

		if n.kind == kindDir {
			r.NLink = 2
		}

		recs = append(recs, cpio.MakeReproducible(r))
	}

	return recs
}

// cpioBytes is the uncompressed newc archive with its trailer.
func (t *tree) cpioBytes() ([]byte, error) {
	var buf bytes.Buffer

	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecords(w, t.records()); err != nil {
		return nil, err
	}

	if err := cpio.WriteTrailer(w); err != nil {
		return nil, err
	}

	return buf.Bytes(), nil
}
