package build

import (
	"context"

	"github.com/labfleet/labfleet/images/spec"
)

// outputTable lists every output format: a new format is a new row.
var outputTable = []struct {
	kind  string
	step  string
	write func(*builder, context.Context) error
}{
	{spec.OutputUKI, "assemble and sign UKI", nil}, // produced by the UKI step every build needs
	{spec.OutputDisk, "write disk image", (*builder).writeDisk},
	{spec.OutputInstaller, "write installer image", (*builder).writeInstaller},
}
