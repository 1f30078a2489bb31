package harness

import (
	"testing"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// BenchmarkBootTrivial measures QEMU start to the trivial init's marker
// through OVMF (SMM, Secure Boot firmware in Setup Mode), systemd-boot and an
// unsigned UKI, with and without a TPM: the floor every lab boot pays.
func BenchmarkBootTrivial(b *testing.B) {
	for _, tpm := range []bool{false, true} {
		name := "no-tpm"
		if tpm {
			name = "tpm"
		}

		b.Run(name, func(b *testing.B) {
			disk := trivialDisk(b)
			total := 0.0

			for b.Loop() {
				vm, err := Start(b.Context(), Spec{Name: "bench", Disk: disk, TPM: tpm})
				if err != nil {
					b.Fatal(err)
				}

				_, at, err := vm.WaitMarkerAt(b.Context(), nodeapi.MarkerInit)
				if err != nil {
					vm.Close() //nolint:errcheck
					b.Fatal(err)
				}

				total += at.Sub(vm.StartedAt()).Seconds()

				vm.Close() //nolint:errcheck
			}

			b.ReportMetric(total/float64(b.N), "s/boot")
		})
	}
}
