package harness

import (
	"io"
	"net"
	"os"
)

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close() //nolint:errcheck

	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}

	if _, err := io.Copy(out, in); err != nil {
		out.Close() //nolint:errcheck

		return err
	}

	return out.Close()
}

// pickPort is how the harness picks API ports; tests replace it to make
// QEMU lose the race for a port.
var pickPort = freePort

// freePort asks the kernel for a free TCP port on 127.0.0.1. Another
// process could take it before QEMU binds it; QEMU then fails to start and
// says so in qemu.log.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close() //nolint:errcheck

	return l.Addr().(*net.TCPAddr).Port, nil
}
