// Package health decides whether a boot is good enough to bless: the
// checks labos runs (TPM unlock, STATE, API, the eBPF features Cilium
// needs in the booted kernel, baked add-ons) and the test injection that
// makes a boot deliberately unhealthy.
package health

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// InjectHealthFail is the labos.inject= value that fails the health check
// (used to build a bad-but-booting image for the fallback test).
const InjectHealthFail = "health-fail"

// CheckInjected names the check an injected failure adds.
const CheckInjected = "injected"

// Probe is one kernel feature check.
type Probe struct {
	Name string
	Run  func() error
}

// CiliumProbes are the program types, map types and helpers Cilium's
// datapath relies on (tc/XDP programs, socket-LB cgroup hooks, its maps,
// FIB lookup and redirect helpers).
func CiliumProbes() []Probe {
	var ps []Probe

	for _, pt := range []ebpf.ProgramType{ebpf.SchedCLS, ebpf.XDP, ebpf.CGroupSockAddr, ebpf.SockOps, ebpf.CGroupSock} {
		ps = append(ps, Probe{Name: "prog/" + pt.String(), Run: func() error { return features.HaveProgramType(pt) }})
	}

	for _, mt := range []ebpf.MapType{ebpf.Hash, ebpf.Array, ebpf.LRUHash, ebpf.LPMTrie, ebpf.PerCPUHash,
		ebpf.PerCPUArray, ebpf.ProgramArray, ebpf.PerfEventArray, ebpf.HashOfMaps, ebpf.RingBuf} {
		ps = append(ps, Probe{Name: "map/" + mt.String(), Run: func() error { return features.HaveMapType(mt) }})
	}

	for _, h := range []asm.BuiltinFunc{asm.FnFibLookup, asm.FnRedirectNeigh, asm.FnRedirectPeer,
		asm.FnSkbAdjustRoom, asm.FnGetSocketCookie, asm.FnJiffies64} {
		ps = append(ps, Probe{Name: "helper/SchedCLS/" + h.String(), Run: func() error { return features.HaveProgramHelper(ebpf.SchedCLS, h) }})
	}

	ps = append(ps,
		Probe{Name: "helper/CGroupSockAddr/" + asm.FnGetNetnsCookie.String(), Run: func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)
		}},
		Probe{Name: "large-instructions", Run: features.HaveLargeInstructions},
	)

	return ps
}

// RunProbes runs probes and folds them into one check; its message names
// every missing feature.
func RunProbes(name string, ps []Probe) nodeapi.Check {
	var missing []string

	for _, p := range ps {
		if err := p.Run(); err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				missing = append(missing, p.Name)
			} else {
				missing = append(missing, fmt.Sprintf("%s (%v)", p.Name, err))
			}
		}
	}

	if len(missing) > 0 {
		return nodeapi.Check{Name: name, Message: "missing: " + strings.Join(missing, ", ")}
	}

	return nodeapi.Check{Name: name, Healthy: true, Message: fmt.Sprintf("%d features present", len(ps))}
}

// Addons checks that the image carries add-ons (want lists names that
// must be present; empty means at least one).
func Addons(got []nodeapi.Addon, want []string) nodeapi.Check {
	c := nodeapi.Check{Name: nodeapi.ServiceAddons}

	have := map[string]bool{}
	names := make([]string, 0, len(got))

	for _, a := range got {
		have[a.Name] = true
		names = append(names, a.Name)
	}

	var missing []string

	for _, w := range want {
		if !have[w] {
			missing = append(missing, w)
		}
	}

	switch {
	case len(missing) > 0:
		c.Message = "missing add-ons: " + strings.Join(missing, ", ")
	case len(got) == 0:
		c.Message = "no add-ons baked into the image"
	default:
		c.Healthy = true
		c.Message = strings.Join(names, ", ")
	}

	return c
}

// Evaluate folds checks into a verdict; reason names the failed checks.
// With inject == InjectHealthFail an extra failing check is appended.
func Evaluate(checks []nodeapi.Check, inject string) ([]nodeapi.Check, bool, string) {
	if inject == InjectHealthFail {
		checks = append(checks, nodeapi.Check{Name: CheckInjected, Message: "labos.inject=" + InjectHealthFail})
	}

	var failed []string

	for _, c := range checks {
		if !c.Healthy {
			failed = append(failed, c.Name)
		}
	}

	if len(failed) > 0 {
		return checks, false, "failed: " + strings.Join(failed, ",")
	}

	return checks, true, ""
}
