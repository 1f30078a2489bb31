package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/harness"
)

func init() { commands = append(commands, newPhasesCommand) }

func newPhasesCommand(g *globals) *cobra.Command {
	var baseline []string

	cmd := &cobra.Command{
		Use:   "phases REPORT.json...",
		Short: "Where boot time goes: median phase durations of 'labctl up -o json' reports",
		Long: `phases reads reports written by 'labctl up -o json' (several boots of one
image) and prints the median duration of each boot phase: firmware (QEMU
start to the kernel's clock zero: OVMF, systemd-boot, systemd-stub, the
kernel's EFI stub), kernel (to /init's first marker), then each labos step
named by the console marker that ends it. With --baseline, the reports of
the baseline image (the trivial init, 'labctl up --until init') go in a
second column. Markdown (text) or JSON.`,
		Example: `  labctl up _out/labos/disk.raw -o json > boot-1.json   # (several times)
  labctl phases boot-*.json --baseline trivial-1.json,trivial-2.json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErr("%s needs at least one report (see --help)", cmd.CommandPath())
			}

			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPhases(g, args, baseline, cmd.OutOrStdout())
		},
	}

	cmd.Flags().StringSliceVar(&baseline, "baseline", nil, "reports of the baseline image (comma-separated or repeated)")

	return cmd
}

// phaseRow is one phase's median over the reports that have it.
type phaseRow struct {
	Name     string   `json:"name"`
	Seconds  float64  `json:"seconds"`
	Samples  int      `json:"samples"`
	Baseline *float64 `json:"baselineSeconds,omitempty"`
}

type phasesResult struct {
	Phases       []phaseRow `json:"phases"`
	Total        float64    `json:"totalSeconds"`         // sum of the medians
	BaselineTime float64    `json:"baselineTotalSeconds"` // same for the baseline
}

func runPhases(g *globals, reports, baseline []string, w io.Writer) error {
	lab, err := readPhases(reports)
	if err != nil {
		return err
	}

	res := phasesResult{Phases: medianPhases(lab)}

	if len(baseline) > 0 {
		base, err := readPhases(baseline)
		if err != nil {
			return err
		}

		for _, b := range medianPhases(base) {
			v := b.Seconds
			res.BaselineTime += v

			i := slices.IndexFunc(res.Phases, func(r phaseRow) bool { return r.Name == b.Name })
			if i < 0 {
				res.Phases = append(res.Phases, phaseRow{Name: b.Name, Baseline: &v})

				continue
			}

			res.Phases[i].Baseline = &v
		}
	}

	for _, r := range res.Phases {
		res.Total += r.Seconds
	}

	if g.output == "json" {
		return writeJSON(w, res)
	}

	fmt.Fprintln(w, "| phase (ends with marker) | s (median) | baseline s |")
	fmt.Fprintln(w, "| --- | ---: | ---: |")

	for _, r := range res.Phases {
		b := "-"
		if r.Baseline != nil {
			b = fmt.Sprintf("%.2f", *r.Baseline)
		}

		s := "-"
		if r.Samples > 0 {
			s = fmt.Sprintf("%.2f", r.Seconds)
		}

		fmt.Fprintf(w, "| %s | %s | %s |\n", r.Name, s, b)
	}

	if len(baseline) > 0 {
		fmt.Fprintf(w, "| **sum** | **%.2f** | **%.2f** |\n", res.Total, res.BaselineTime)
	} else {
		fmt.Fprintf(w, "| **sum** | **%.2f** | - |\n", res.Total)
	}

	return nil
}

// readPhases reads each report's phases; a report without phases (a labos
// that prints no uptimes) is an error naming the file.
func readPhases(paths []string) ([][]harness.Phase, error) {
	var out [][]harness.Phase

	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading report: %w", err)
		}

		var r struct {
			Phases []harness.Phase `json:"phases"`
		}

		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("%s: not a 'labctl up -o json' report: %w", p, err)
		}

		if len(r.Phases) == 0 {
			return nil, fmt.Errorf("%s: the report has no phases (labos printed no uptimes with its markers: an image built before they were added?)", p)
		}

		out = append(out, r.Phases)
	}

	return out, nil
}

// medianPhases gives each phase name, in the order of the first report
// that has it, the median of its durations. A name that occurs more than
// once in a boot (e.g. enter-initrd again after a late TPM) is summed.
func medianPhases(boots [][]harness.Phase) []phaseRow {
	var (
		order   []string
		samples = map[string][]float64{}
	)

	for _, b := range boots {
		sums := map[string]float64{}

		for _, p := range b {
			if _, ok := sums[p.Name]; !ok && !slices.Contains(order, p.Name) {
				order = append(order, p.Name)
			}

			sums[p.Name] += p.Seconds
		}

		for name, s := range sums {
			samples[name] = append(samples[name], s)
		}
	}

	rows := make([]phaseRow, 0, len(order))

	for _, name := range order {
		rows = append(rows, phaseRow{Name: name, Seconds: median(samples[name]), Samples: len(samples[name])})
	}

	return rows
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}

	s := slices.Clone(v)
	sort.Float64s(s)

	if len(s)%2 == 1 {
		return s[len(s)/2]
	}

	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// phaseLine is the one-line form of a boot's phases for labctl up's text
// output.
func phaseLine(ps []harness.Phase) string {
	parts := make([]string, 0, len(ps))
	for _, p := range ps {
		parts = append(parts, fmt.Sprintf("%s %.2f", p.Name, p.Seconds))
	}

	return strings.Join(parts, ", ")
}
