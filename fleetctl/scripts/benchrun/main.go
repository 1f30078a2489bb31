// Command benchrun measures fleetctl on a large SIMULATED fleet: CPU time and
// peak RSS of a whole rollout, and the time `rollout resume` takes to pick a
// rollout up again after the executing process was killed with SIGKILL.
// It is run by fleetctl/scripts/bench.sh.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type measure struct {
	wall   time.Duration
	cpu    time.Duration
	rssMiB float64
	exit   int
}

func usage(ps *os.ProcessState, wall time.Duration) measure {
	ru := ps.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())

	return measure{wall: wall, cpu: cpu, rssMiB: float64(ru.Maxrss) / 1024, exit: ps.ExitCode()}
}

func main() {
	var (
		bin         = flag.String("fleetctl", "fleetctl", "fleetctl binary")
		work        = flag.String("dir", "", "work directory (default: a temporary one)")
		clusters    = flag.Int("clusters", 10000, "simulated clusters")
		nodes       = flag.Int("nodes-per-cluster", 3, "nodes per cluster")
		failRate    = flag.String("fail-rate", "0.02", "share of nodes failing")
		concurrency = flag.String("concurrency", "500", "clusters in parallel per wave")
		killAfter   = flag.Duration("kill-after", 3*time.Second, "SIGKILL the rollout this long after start (resume test)")
	)

	flag.Parse()

	if err := run(*bin, *work, *clusters, *nodes, *failRate, *concurrency, *killAfter); err != nil {
		fmt.Fprintln(os.Stderr, "benchrun:", err)
		os.Exit(1)
	}
}

func run(bin, work string, clusters, nodes int, failRate, concurrency string, killAfter time.Duration) error {
	if work == "" {
		d, err := os.MkdirTemp("", "fleetctl-bench-")
		if err != nil {
			return err
		}

		defer os.RemoveAll(d)

		work = d
	}

	prepare := func(name string) (string, error) {
		dir := filepath.Join(work, name)
		os.RemoveAll(dir)

		out, err := exec.Command(bin, "sim", "init", "--dir", dir, "--clusters", fmt.Sprint(clusters),
			"--nodes-per-cluster", fmt.Sprint(nodes), "--fail-rate", failRate, "--concurrency", concurrency,
			"--health-timeout", "1s", "--health-interval", "20ms").CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("sim init: %v: %s", err, out)
		}

		return dir, nil
	}

	startArgs := func(dir string) []string {
		return []string{"--db", filepath.Join(dir, "fleet.db"), "--log-level", "warn", "rollout", "start",
			"--inventory", filepath.Join(dir, "inventory.yaml"), "--plan", filepath.Join(dir, "plan.yaml"),
			"--driver", "sim", "--sim-dir", dir, "-o", "json"}
	}

	// 1. A whole rollout.
	dir, err := prepare("full")
	if err != nil {
		return err
	}

	t0 := time.Now()
	cmd := exec.Command(bin, startArgs(dir)...)
	out, err := cmd.Output()

	full := usage(cmd.ProcessState, time.Since(t0))
	if err != nil && full.exit != 0 {
		return fmt.Errorf("rollout start: %v", err)
	}

	summary := strings.Join(strings.Fields(grepJSON(string(out), `"state"`, `"done"`, `"failed"`, `"skipped"`)), " ")

	// 2. Kill -9 mid-rollout, then resume.
	dir, err = prepare("resume")
	if err != nil {
		return err
	}

	cmd = exec.Command(bin, startArgs(dir)...)
	if err := cmd.Start(); err != nil {
		return err
	}

	time.Sleep(killAfter)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	resume := exec.Command(bin, "--db", filepath.Join(dir, "fleet.db"), "--log-level", "info", "rollout", "resume", "-o", "json")
	stderr, err := resume.StderrPipe()
	if err != nil {
		return err
	}

	resume.Stdout = io.Discard
	t1 := time.Now()

	if err := resume.Start(); err != nil {
		return err
	}

	var resumedAfter, reconciledAfter time.Duration

	inFlight := "0"

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()

		if resumedAfter == 0 && strings.Contains(line, "rollout resumed") {
			resumedAfter = time.Since(t1)
		}

		if strings.Contains(line, "reconciling nodes left in flight") {
			inFlight = field(line, "nodes")
		}

		if reconciledAfter == 0 && strings.Contains(line, "in-flight nodes reconciled") {
			reconciledAfter = time.Since(t1)
		}

		if ctx.Err() != nil {
			break
		}
	}

	resume.Wait()
	res := usage(resume.ProcessState, time.Since(t1))

	fmt.Printf("SIMULATED fleet: %d clusters x %d nodes, fail rate %s, concurrency %s\n", clusters, nodes, failRate, concurrency)
	fmt.Printf("full rollout:   cpu %.2fs  peak RSS %.0f MiB  wall %.2fs  exit %d  (%s)\n",
		full.cpu.Seconds(), full.rssMiB, full.wall.Seconds(), full.exit, summary)
	fmt.Printf("kill -9 after %s, then rollout resume: resumed (state loaded, lease taken, reconciling) after %dms;\n", killAfter, resumedAfter.Milliseconds())
	if reconciledAfter > 0 {
		fmt.Printf("  the %s nodes left in flight by the killed process were reconciled (version asked, gate passed or failed) after %dms\n",
			inFlight, reconciledAfter.Milliseconds())
	}

	fmt.Printf("  resume run to the end: cpu %.2fs  peak RSS %.0f MiB  wall %.2fs  exit %d\n", res.cpu.Seconds(), res.rssMiB, res.wall.Seconds(), res.exit)

	if resumedAfter == 0 {
		return fmt.Errorf("resume never reported 'rollout resumed'")
	}

	return nil
}

// field returns the value of key=value in a log line.
func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}

	return "?"
}

// grepJSON keeps the top-level lines of out that start with one of keys.
func grepJSON(out string, keys ...string) string {
	var b strings.Builder

	for line := range strings.Lines(out) {
		l := strings.TrimSpace(line)
		for _, k := range keys {
			if strings.HasPrefix(l, k) && strings.HasPrefix(line, "  \"") {
				b.WriteString(l + " ")
			}
		}
	}

	return b.String()
}
