// Package nodeapi is the contract between labos (the node), the lab harness,
// the qemu-tests and fleetctl: where the node API listens and which console
// markers labos prints while it boots.
//
// The node API itself is the Talos v1.14 API (machinery's api/machine and
// the COSI State service), served by labos with mTLS and Talos's roles
// exactly as a Talos node serves it (see lab/labos/api), so the same client
// code drives real Talos nodes and lab nodes. Clients read node state only
// through it: Version (VersionInfo.Tag is the Talos release labos stands in
// for, VersionInfo.Sha the image's own version), the COSI resources
// SecurityStates, VolumeStatuses, MachineStatuses, Versions and
// BootedEntries, and the Events stream. There is no labos-only call.
package nodeapi

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

const (
	// APIPort is the port the machine API listens on inside the guest (Talos's apid port).
	APIPort = 50000

	// GuestRegistryAddr is the address a guest uses to reach the registry the
	// test opened on the host (QEMU guestfwd to 127.0.0.1:<port>).
	GuestRegistryAddr = "10.0.2.100:5000"

	// MarkerPrefix starts every console line the tests may wait for.
	MarkerPrefix = "LABOS: "
)

// Console markers, printed as MarkerPrefix + marker [+ " " + details].
const (
	MarkerInit          = "init"            // "LABOS: init version=1.0.0"
	MarkerPhase         = "phase"           // "LABOS: phase enter-initrd"
	MarkerSecureBoot    = "secureboot"      // "LABOS: secureboot enabled=true setupmode=false"
	MarkerStateFormat   = "state-formatted" // first boot sealed and formatted STATE
	MarkerStateUnlocked = "state-unlocked"
	MarkerUnlockFailed  = "unlock-failed" // "LABOS: unlock-failed reason=..."
	MarkerAPIUp         = "api-up"        // "LABOS: api-up addr=:50000"
	MarkerHealthy       = "healthy"
	MarkerUnhealthy     = "unhealthy" // "LABOS: unhealthy reason=..."
	MarkerBlessed       = "blessed"   // "LABOS: blessed entry=..."
	MarkerStatus        = "status"    // "LABOS: status {json Status}"
	MarkerRebooting     = "rebooting"
	MarkerError         = "error"           // "LABOS: error step=... err=..."
	MarkerUpgrading     = "upgrade-writing" // "LABOS: upgrade-writing entry=NAME-VER+3.efi": verified, ESP write starts
	MarkerPoweroff      = "poweroff"
	// MarkerMaintenance: the node has no machine config yet and serves
	// Talos's maintenance API ("LABOS: maintenance addr=:50000").
	MarkerMaintenance = "maintenance"
	// MarkerConfigApplied: a config arrived in maintenance mode and is kept on STATE.
	MarkerConfigApplied = "config-applied"
	// MarkerSealRefused: STATE was neither formatted nor sealed because
	// Secure Boot is not enforced with our keys ("LABOS: seal-refused reason=setup-mode").
	MarkerSealRefused = "seal-refused"
	// MarkerCheckpoint: a power-cut test point of an upgrade or a blessing
	// ("LABOS: checkpoint point=mid-write").
	MarkerCheckpoint = "checkpoint"

	// Boot steps that had no marker of their own, printed so the harness can
	// tell where a boot's time goes (every marker carries the uptime, see
	// FormatMarkerAt): each ends the step named after it.
	MarkerTPMReady     = "tpm-ready"      // "LABOS: tpm-ready device=/dev/tpmrm0" (or "none")
	MarkerModules      = "modules-loaded" // "LABOS: modules-loaded count=23"
	MarkerESPMounted   = "esp-mounted"    // "LABOS: esp-mounted device=/dev/vda1": partitions found, ESP mounted
	MarkerKeyUnsealed  = "key-unsealed"   // STATE's key unsealed from the TPM (later boots) or sealed (first boot)
	MarkerLUKSOpened   = "luks-opened"    // dm-crypt mapping of STATE opened
	MarkerStateMounted = "state-mounted"  // STATE's ext4 mounted at /var (after mkfs on the first boot)
)

// Service names reported by ServiceList; each carries a health flag.
const (
	ServiceTPMUnlock = "tpm-unlock"
	ServiceState     = "state"
	ServiceAPI       = "apid"
	ServiceEBPF      = "ebpf"
	ServiceAddons    = "addons"
)

// Check is one health check result.
type Check struct {
	Name    string `json:"name"`
	Healthy bool   `json:"healthy"`
	Message string `json:"message,omitempty"`
}

// Addon is an add-on labos found baked into the booted image.
type Addon struct {
	Name      string   `json:"name"`
	Version   string   `json:"version,omitempty"`
	Manifests []string `json:"manifests,omitempty"`
	Images    []string `json:"images,omitempty"` // references by digest
}

// Status is what labos knows about itself, printed as a MarkerStatus console
// line once the boot settled (for the lab harness watching the console; the
// API serves the same facts as Talos resources).
type Status struct {
	Version        string `json:"version"`
	SecureBoot     bool   `json:"secureBoot"`
	SetupMode      bool   `json:"setupMode"`
	TPMUnlocked    bool   `json:"tpmUnlocked"`
	StateFormatted bool   `json:"stateFormatted"` // STATE was created on this boot
	// Configured is set once the node runs on a machine config kept on STATE.
	Configured  bool   `json:"configured"`
	UnlockError string `json:"unlockError,omitempty"`
	// StateBoots counts the boots that unlocked STATE; labos keeps the
	// counter on STATE itself, so it proves data written earlier reads back.
	StateBoots int `json:"stateBoots,omitempty"`
	// StateToken is a random token written to STATE when it was created.
	StateToken string `json:"stateToken,omitempty"`
	// UnsealAfterStartRefused reports that, after start-the-world was
	// extended into PCR 11, a second unseal of the disk key was refused.
	UnsealAfterStartRefused bool     `json:"unsealAfterStartRefused"`
	Healthy                 bool     `json:"healthy"`
	Checks                  []Check  `json:"checks"`
	BootEntry               string   `json:"bootEntry,omitempty"` // systemd-boot entry booted (LoaderEntrySelected)
	Blessed                 bool     `json:"blessed"`
	FailedUpgrades          []string `json:"failedUpgrades,omitempty"` // entries systemd-boot gave up on (+0)
	Addons                  []Addon  `json:"addons,omitempty"`
	UptimeSeconds           float64  `json:"uptimeSeconds"`
}

// FormatMarker renders a console marker line (without newline). Details
// often carry text a client chose (image labels, error messages), so every
// control character (newline, CR, ESC, NUL, C1 controls, Unicode line and
// paragraph separators) and every invalid UTF-8 byte is written as a Go
// escape (\n, \x1b, \u2028): whatever the details hold, the result is one
// line and cannot start a forged marker line. Printable text, backslashes
// included, is left alone so JSON details (which json.Marshal never emits
// with raw control characters) still decode.
func FormatMarker(marker, details string) string {
	if details == "" {
		return MarkerPrefix + EscapeConsole(marker)
	}

	return MarkerPrefix + EscapeConsole(marker) + " " + EscapeConsole(details)
}

// FormatMarkerAt is FormatMarker with the guest's uptime (seconds since
// the kernel started) in front, in the kernel's own printk form
// "[%5d.%06d] ", so a console reads as one timeline and the harness can
// tell how long each boot step took. The marker itself is unchanged and
// ParseMarker finds MarkerPrefix anywhere in a line, so readers that wait
// for a marker or compare its details see what they saw before.
func FormatMarkerAt(uptime time.Duration, marker, details string) string {
	return FormatUptime(uptime) + FormatMarker(marker, details)
}

// FormatUptime renders d as printk's "[    2.345678] " prefix (negative
// durations as zero).
func FormatUptime(d time.Duration) string {
	if d < 0 {
		d = 0
	}

	us := d.Microseconds()

	return fmt.Sprintf("[%5d.%06d] ", us/1_000_000, us%1_000_000)
}

// ParseUptime reads the uptime in front of a console line: a marker of
// FormatMarkerAt or a kernel message, both "[ seconds.micros] ...". ok is
// false when the line does not start with one.
func ParseUptime(line string) (time.Duration, bool) {
	rest, found := strings.CutPrefix(line, "[")
	if !found {
		return 0, false
	}

	stamp, _, found := strings.Cut(rest, "]")
	if !found {
		return 0, false
	}

	secs, frac, found := strings.Cut(strings.TrimSpace(stamp), ".")
	if !found || secs == "" || len(frac) != 6 {
		return 0, false
	}

	s, err1 := strconv.ParseUint(secs, 10, 32)
	us, err2 := strconv.ParseUint(frac, 10, 32)

	if err1 != nil || err2 != nil {
		return 0, false
	}

	return time.Duration(s)*time.Second + time.Duration(us)*time.Microsecond, true
}

// EscapeConsole makes s safe to print inside one console line (see
// FormatMarker).
func EscapeConsole(s string) string {
	clean := true

	for _, r := range s {
		if mustEscape(r) {
			clean = false

			break
		}
	}

	if clean {
		return s
	}

	var b strings.Builder

	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])

		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case mustEscape(r):
			// strconv.QuoteRune gives \n, \t, \x1b, \u2028 ...; drop its quotes
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}

		i += size
	}

	return b.String()
}

func mustEscape(r rune) bool {
	return r == utf8.RuneError || unicode.IsControl(r) || r == '\u2028' || r == '\u2029'
}

// ParseMarker splits a console line into marker and details; ok is false for
// lines that are not markers.
func ParseMarker(line string) (marker, details string, ok bool) {
	i := strings.Index(line, MarkerPrefix)
	if i < 0 {
		return "", "", false
	}

	rest := strings.TrimSpace(line[i+len(MarkerPrefix):])
	marker, details, _ = strings.Cut(rest, " ")

	return marker, details, marker != ""
}

// ParseStatus decodes the details of a MarkerStatus line.
func ParseStatus(data string) (Status, error) {
	var s Status
	if err := json.Unmarshal([]byte(data), &s); err != nil {
		return Status{}, fmt.Errorf("decoding labos status: %w", err)
	}

	return s, nil
}
