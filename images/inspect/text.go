package inspect

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// WriteText renders the report for a terminal.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }

	p("%s\n", r.Path)
	p("  kind\t%s\n  size\t%d\n  sha256\t%s\n", r.Kind, r.Size, r.SHA256)

	if r.PE != nil {
		writePE(p, r.PE, "  ")
	}

	if r.Disk != nil {
		writeDisk(p, r.Disk)
	}

	if checked, ok, failures := r.Verification(); checked {
		if ok {
			p("verification: OK (every signature checked against %s)\n", r.Cert)
		} else {
			p("verification: FAILED\n")

			for _, f := range failures {
				p("  %s\n", f)
			}
		}
	}

	return tw.Flush()
}

func writePE(p func(string, ...any), pe *PE, in string) {
	p("%smachine\t%s\n", in, pe.Machine)
	p("%sauthenticode sha256\t%s\n", in, pe.AuthenticodeSHA256)

	p("%ssections:\n", in)
	p("%s  NAME\tVSIZE\tRAWSIZE\tSHA256\n", in)

	for _, s := range pe.Sections {
		p("%s  %s\t%d\t%d\t%s\n", in, s.Name, s.VirtualSize, s.RawSize, s.SHA256)
	}

	if len(pe.Signers) == 0 {
		p("%ssigners:\tnone (unsigned)\n", in)
	} else {
		p("%ssigners:\n", in)

		for _, s := range pe.Signers {
			p("%s  %s\t(issuer %s, serial %s, not after %s)\n", in, s.Subject, s.Issuer, s.Serial, s.NotAfter)
		}
	}

	if v := pe.Verification; v != nil {
		if v.Verified {
			p("%sverified\tyes, by %s (%s)\n", in, v.Cert, v.Subject)
		} else {
			p("%sverified\tNO against %s: %s\n", in, v.Cert, v.Error)
		}
	}

	if pe.Uname != "" {
		p("%suname\t%s\n", in, pe.Uname)
	}

	if pe.Cmdline != "" {
		p("%scmdline\t%s\n", in, pe.Cmdline)
	}

	if len(pe.OSRelease) > 0 {
		p("%sos-release:\n", in)

		for _, k := range sortedKeys(pe.OSRelease) {
			p("%s  %s\t%s\n", in, k, pe.OSRelease[k])
		}
	}

	if pe.SBAT != "" {
		p("%ssbat:\n", in)

		for _, l := range strings.Split(pe.SBAT, "\n") {
			p("%s  %s\n", in, l)
		}
	}

	if pe.Profile != "" {
		p("%sprofile\t%s\n", in, pe.Profile)
	}

	if k := pe.PCRPublicKey; k != nil {
		p("%spcr public key\t%s-%d, pkfp %s\n", in, k.Type, k.Bits, k.Fingerprint)
	}

	if len(pe.PCRSignature) > 0 {
		p("%spcr signature:\n", in)

		for _, bank := range sortedKeys(pe.PCRSignature) {
			for _, e := range pe.PCRSignature[bank] {
				status := "unchecked"
				if e.Verified != nil {
					status = map[bool]string{true: "valid", false: "INVALID"}[*e.Verified]
				}

				if e.MatchesSections != nil {
					if *e.MatchesSections {
						status += ", matches sections (" + e.Phase + ")"
					} else {
						status += ", DOES NOT MATCH the sections"
					}
				}

				p("%s  %s\tpcrs %v\tpol %s\t%s\n", in, bank, e.PCRs, e.Pol, status)
			}
		}
	}
}

func writeDisk(p func(string, ...any), d *Disk) {
	p("  sector size\t%d\n  disk guid\t%s\n", d.SectorSize, d.GUID)
	p("partitions:\n")
	p("  #\tNAME\tTYPE\tSTART\tEND\tSIZE\n")

	for _, part := range d.Partitions {
		typ := part.TypeName
		if typ == "" {
			typ = part.Type
		}

		p("  %d\t%s\t%s\t%d\t%d\t%d\n", part.Index, part.Name, typ, part.Start, part.End, part.Size)
	}

	if d.ESP == nil {
		p("no EFI System Partition\n")

		return
	}

	p("ESP (partition %d) files:\n", d.ESP.Partition)

	for _, f := range d.ESP.Files {
		p("  %d\t%s\n", f.Size, f.Path)
	}

	for _, a := range d.ESP.AuthVars {
		switch {
		case a.Error != "":
			p("%s:\tunreadable: %s\n", a.Path, a.Error)
		default:
			p("%s:\tenrolls %s\n", a.Path, strings.Join(a.Certs, "; "))
		}

		if a.ListsCert != nil {
			p("  lists the given certificate\t%v\n", *a.ListsCert)
		}
	}

	for _, b := range d.ESP.Binaries {
		p("%s:\n", b.Path)

		if b.Error != "" {
			p("  error\t%s\n", b.Error)

			continue
		}

		writePE(p, b.PE, "  ")
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}

	slices.Sort(keys)

	return keys
}
