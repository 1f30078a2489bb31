package inventory

import (
	"bytes"

	"github.com/labfleet/labfleet/fleetctl/window"
)

// A fast path for reading inventory files.
//
// yaml.v3 spends most of an inventory load in its scanner and parser (a
// port of libyaml: a token, an event and a node per scalar) before its
// reflective decoder even starts: 0.3 s of CPU and about 30 bytes of
// garbage per byte of YAML for the simulator's 30,000-node inventory.
// Inventories are plain block YAML: mappings of known fields, sequences,
// and scalars that are names, endpoints, zones and paths.
//
// fastDecode reads exactly that subset and nothing else. It never reports
// an error: whenever it meets anything it does not fully understand
// (flow style, anchors, aliases, tags, block scalars, comments after a
// value, escapes, tabs, non-ASCII bytes, unknown or repeated keys, empty
// or null values, empty documents, a line the YAML scanner would refuse)
// it gives up and the caller decodes the whole file with yaml.v3 as
// before. So every error message, and every line number in it, still
// comes from yaml.v3, and what fastDecode accepts it decodes to what
// yaml.v3 would (TestFastDecodeMatchesYAML, FuzzFastDecode).

// maxFastLine keeps the fast path away from YAML's 1024-character limit on
// implicit keys, which yaml.v3 enforces with an error.
const maxFastLine = 1000

type fastParser struct {
	data []byte
	next int // offset of the line after the current one

	// The current line: its indentation, its text after the indentation
	// (no line break), and what it is.
	ind  int
	text []byte
	kind lineKind

	nodes []Node // scratch for one cluster's nodes

	// intern keeps one copy of values that repeat all over an inventory
	// (roles, zones, regions, site names, node names).
	intern map[string]string
}

type lineKind int

const (
	lineContent lineKind = iota
	lineDocStart
	lineEOF
)

// fastDecode returns the entries of all documents of an inventory file,
// in order, decoded as yaml.v3 with KnownFields would decode each document
// into File, or ok false when the file holds anything outside the subset
// described above.
//
// Only printable ASCII is accepted: no tabs, carriage returns, byte order
// marks or other encodings to reason about. Every byte of a line the
// parser takes is checked by the rule that reads it (keys, scalars,
// comments), so the file is not scanned a second time for that.
func fastDecode(data []byte) (f File, ok bool) {
	p := &fastParser{data: data, intern: map[string]string{}}
	docs := 0
	p.advance()

	if p.kind == lineDocStart {
		// An explicit start of the first document.
		p.advance()
	}

	for p.kind != lineEOF {
		if p.kind != lineContent || p.ind != 0 {
			// An empty document, or one not starting at column 0.
			return File{}, false
		}

		if !p.file(&f) {
			return File{}, false
		}

		docs++

		switch p.kind {
		case lineDocStart:
			p.advance()
			if p.kind == lineEOF {
				return File{}, false // a trailing empty document
			}
		case lineEOF:
		default:
			return File{}, false
		}
	}

	return f, docs > 0
}

// advance moves to the next line that is not blank and not a comment,
// sets kind lineEOF at the end, and gives up (fail) on lines it refuses
// outright.
func (p *fastParser) advance() {
	if p.failed() {
		return
	}

	for {
		if p.next >= len(p.data) {
			p.kind, p.text, p.ind = lineEOF, nil, 0

			return
		}

		start := p.next

		end := bytes.IndexByte(p.data[start:], '\n')
		if end < 0 {
			end = len(p.data)
		} else {
			end += start
		}

		p.next = end + 1
		line := p.data[start:end]

		ind := 0
		for ind < len(line) && line[ind] == ' ' {
			ind++
		}

		text := line[ind:]
		if len(text) == 0 {
			continue
		}

		if text[0] == '#' {
			if !printable(text) {
				p.fail() // yaml.v3 refuses control characters even here

				return
			}

			continue
		}

		p.ind, p.text, p.kind = ind, text, lineContent

		if len(line) > maxFastLine {
			p.fail()

			return
		}

		if ind == 0 && (bytes.HasPrefix(text, []byte("---")) || bytes.HasPrefix(text, []byte("..."))) {
			if len(text) == 3 && text[0] == '-' {
				p.kind = lineDocStart

				return
			}

			// "--- value", a document end marker, or a plain scalar
			// starting like one: leave it to yaml.v3.
			p.fail()
		}

		return
	}
}

// fail makes every later check refuse: the current line looks like
// content at an indentation no parser state accepts.
func (p *fastParser) fail() {
	p.kind, p.ind, p.text = lineContent, -1, nil
	p.next = len(p.data)
}

// failed reports whether the parser gave up.
func (p *fastParser) failed() bool { return p.ind < 0 }

// endOfMapping reports whether the mapping at indentation ind is over
// cleanly: the current line is less indented, a document start or the
// end. A more indented line (a continued plain scalar, say) refuses.
func (p *fastParser) endOfMapping(ind int) bool {
	return p.kind != lineContent || (p.ind >= 0 && p.ind < ind)
}

// keyValue splits "key: value" or "key:" of the current line. Keys are
// plain names (letters, digits, '.', '_', '/', '-').
func (p *fastParser) keyValue() (key, value []byte, ok bool) {
	t := p.text

	i := 0
	for i < len(t) && isKeyChar(t[i]) {
		i++
	}

	if i == 0 || i >= len(t) || t[i] != ':' {
		return nil, nil, false
	}

	key, rest := t[:i], t[i+1:]
	if len(rest) == 0 {
		return key, nil, true
	}

	if rest[0] != ' ' {
		return nil, nil, false
	}

	return key, bytes.TrimLeft(rest, " "), true
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}

	return true
}

func isKeyChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '/' || c == '-'
}

func isPlainChar(c byte) bool {
	return isKeyChar(c) || c == ':' || c == '+' || c == '@'
}

// scalar reads one value: a plain scalar of name-like characters that is
// not null, or a single- or double-quoted one without escapes.
func scalar(v []byte) ([]byte, bool) {
	if len(v) == 0 {
		return nil, false
	}

	switch v[0] {
	case '"', '\'':
		q := v[0]
		if len(v) < 2 || v[len(v)-1] != q {
			return nil, false
		}

		in := v[1 : len(v)-1]
		if bytes.IndexByte(in, q) >= 0 || (q == '"' && bytes.IndexByte(in, '\\') >= 0) || !printable(in) {
			return nil, false
		}

		return in, true
	}

	c := v[0]
	if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '/' || c == '_') {
		return nil, false
	}

	for _, c := range v {
		if !isPlainChar(c) {
			return nil, false
		}
	}

	if v[len(v)-1] == ':' {
		return nil, false
	}

	switch string(v) {
	case "null", "Null", "NULL":
		return nil, false
	}

	return v, true
}

// str turns a scalar into a string; shared ones are interned.
func (p *fastParser) str(v []byte, shared bool) string {
	if !shared {
		return string(v)
	}

	if s, ok := p.intern[string(v)]; ok {
		return s
	}

	s := string(v)
	p.intern[s] = s

	return s
}

// scalarField reads the current line's value as a string field and moves on.
func (p *fastParser) scalarField(v []byte, dst *string, shared bool) bool {
	s, ok := scalar(v)
	if !ok {
		return false
	}

	*dst = p.str(s, shared)
	p.advance()

	return true
}

// seen refuses a key given twice in one mapping (yaml.v3 reports it).
func seen(mask *uint32, bit uint32) bool {
	if *mask&bit != 0 {
		return true
	}

	*mask |= bit

	return false
}

// file reads one document's top-level mapping.
func (p *fastParser) file(f *File) bool {
	var mask uint32

	for p.kind == lineContent && p.ind == 0 {
		key, v, ok := p.keyValue()
		if !ok || v != nil {
			return false
		}

		p.advance()

		switch string(key) {
		case "sites":
			if seen(&mask, 1) || !p.seq(0, func(col int) bool {
				var s Site
				if !p.site(col, &s) {
					return false
				}

				f.Sites = append(f.Sites, s)

				return true
			}) {
				return false
			}
		case "clusters":
			if seen(&mask, 2) || !p.seq(0, func(col int) bool {
				var c Cluster
				if !p.cluster(col, &c) {
					return false
				}

				f.Clusters = append(f.Clusters, c)

				return true
			}) {
				return false
			}
		default:
			return false
		}
	}

	return p.endOfMapping(0) && !p.failed()
}

// seq reads a block sequence that is the value of a key at indentation
// parent: its "- " lines may be at the key's indentation or deeper. item
// reads one entry whose content starts at column col of the current line
// (the line's text is moved past the "- ").
func (p *fastParser) seq(parent int, item func(col int) bool) bool {
	if p.kind != lineContent || p.ind < parent || !isSeqEntry(p.text) {
		return false // a null or scalar value: leave it to yaml.v3
	}

	s := p.ind

	for p.kind == lineContent && p.ind == s && isSeqEntry(p.text) {
		rest := p.text[2:]

		n := 0
		for n < len(rest) && rest[n] == ' ' {
			n++
		}

		if n == len(rest) {
			return false // "- " with the entry on the next lines
		}

		col := s + 2 + n
		p.ind, p.text = col, rest[n:]

		if !item(col) {
			return false
		}
	}

	// What follows must belong to an enclosing mapping.
	return !p.failed() && (p.kind != lineContent || p.ind < s || (p.ind == s && s == parent))
}

func isSeqEntry(t []byte) bool { return len(t) >= 2 && t[0] == '-' && t[1] == ' ' }

// scalarSeq reads a block sequence of scalars (a window's days).
func (p *fastParser) scalarSeq(parent int, dst *[]string) bool {
	return p.seq(parent, func(int) bool {
		s, ok := scalar(p.text)
		if !ok {
			return false
		}

		*dst = append(*dst, p.str(s, true))
		p.advance()

		// A more indented line (a continued scalar) ends the
		// sequence, and seq refuses it.
		return true
	})
}

func (p *fastParser) site(col int, s *Site) bool {
	var mask uint32

	for p.kind == lineContent && p.ind == col {
		key, v, ok := p.keyValue()
		if !ok {
			return false
		}

		switch string(key) {
		case "name":
			ok = !seen(&mask, 1) && p.scalarField(v, &s.Name, true)
		case "region":
			ok = !seen(&mask, 2) && p.scalarField(v, &s.Region, true)
		case "country":
			ok = !seen(&mask, 4) && p.scalarField(v, &s.Country, true)
		case "timezone":
			ok = !seen(&mask, 8) && p.scalarField(v, &s.TimeZone, true)
		case "bandwidth":
			ok = !seen(&mask, 16) && p.scalarField(v, &s.Bandwidth, true)
		case "windows":
			if seen(&mask, 32) || v != nil {
				return false
			}

			p.advance()
			ok = p.seq(col, func(wcol int) bool {
				var w window.Window
				if !p.window(wcol, &w) {
					return false
				}

				s.Windows = append(s.Windows, w)

				return true
			})
		default:
			return false
		}

		if !ok {
			return false
		}
	}

	return p.endOfMapping(col)
}

func (p *fastParser) window(col int, w *window.Window) bool {
	var mask uint32

	for p.kind == lineContent && p.ind == col {
		key, v, ok := p.keyValue()
		if !ok {
			return false
		}

		switch string(key) {
		case "start":
			ok = !seen(&mask, 1) && p.scalarField(v, &w.Start, true)
		case "duration":
			ok = !seen(&mask, 2) && p.scalarField(v, &w.Duration, true)
		case "days":
			if seen(&mask, 4) || v != nil {
				return false
			}

			p.advance()
			ok = p.scalarSeq(col, &w.Days)
		default:
			return false
		}

		if !ok {
			return false
		}
	}

	return p.endOfMapping(col)
}

func (p *fastParser) cluster(col int, c *Cluster) bool {
	var mask uint32

	for p.kind == lineContent && p.ind == col {
		key, v, ok := p.keyValue()
		if !ok {
			return false
		}

		switch string(key) {
		case "name":
			ok = !seen(&mask, 1) && p.scalarField(v, &c.Name, false)
		case "site":
			ok = !seen(&mask, 2) && p.scalarField(v, &c.Site, true)
		case "talosconfig":
			ok = !seen(&mask, 4) && p.scalarField(v, &c.Talosconfig, true)
		case "labels":
			if seen(&mask, 8) || v != nil {
				return false
			}

			p.advance()
			ok = p.labels(col, c)
		case "nodes":
			if seen(&mask, 16) || v != nil {
				return false
			}

			p.advance()
			// Nodes are gathered in a scratch slice and copied once
			// into a slice of their number, as yaml.v3 sizes it.
			p.nodes = p.nodes[:0]
			ok = p.seq(col, func(ncol int) bool {
				var n Node
				if !p.node(ncol, &n) {
					return false
				}

				p.nodes = append(p.nodes, n)

				return true
			})
			c.Nodes = append([]Node(nil), p.nodes...)
		default:
			return false
		}

		if !ok {
			return false
		}
	}

	return p.endOfMapping(col)
}

// labels reads a block mapping of strings, more indented than its key.
func (p *fastParser) labels(parent int, c *Cluster) bool {
	if p.kind != lineContent || p.ind <= parent {
		return false
	}

	col := p.ind
	c.Labels = map[string]string{}

	for p.kind == lineContent && p.ind == col {
		key, v, ok := p.keyValue()
		if !ok {
			return false
		}

		k, ok := scalar(key)
		if !ok {
			return false
		}

		if _, dup := c.Labels[string(k)]; dup {
			return false
		}

		var val string
		if !p.scalarField(v, &val, true) {
			return false
		}

		c.Labels[p.str(k, true)] = val
	}

	return p.endOfMapping(col)
}

func (p *fastParser) node(col int, n *Node) bool {
	var mask uint32

	for p.kind == lineContent && p.ind == col {
		key, v, ok := p.keyValue()
		if !ok {
			return false
		}

		switch string(key) {
		case "name":
			ok = !seen(&mask, 1) && p.scalarField(v, &n.Name, true)
		case "endpoint":
			ok = !seen(&mask, 2) && p.scalarField(v, &n.Endpoint, false)
		case "machine":
			ok = !seen(&mask, 4) && p.scalarField(v, &n.Machine, false)
		case "role":
			ok = !seen(&mask, 8) && p.scalarField(v, &n.Role, true)
		default:
			return false
		}

		if !ok {
			return false
		}
	}

	return p.endOfMapping(col)
}
