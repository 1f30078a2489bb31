package sim

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/labfleet/labfleet/fleetctl/driver"
)

// VersionOf derives the version a simulated node reports from an image
// reference: its tag (repo:v1.2.0@sha256:...) or, without a tag, the digest.
func VersionOf(image string) string {
	ref, digest, _ := strings.Cut(image, "@")

	if i := strings.LastIndex(ref, ":"); i >= 0 && !strings.Contains(ref[i:], "/") {
		return ref[i+1:]
	}

	return digest
}

// Factory drives the fleet in-process (no network), for engine tests and
// benchmarks. It is also the fleet's driver.ClusterOpener.
func (f *Fleet) Factory() driver.Factory { return factory{f} }

type factory struct{ f *Fleet }

func (x factory) Open(_ context.Context, t driver.Target) (driver.Node, error) {
	return &localNode{f: x.f, key: Key(t.Cluster, t.Node), preserve: t.Preserve()}, nil
}

func (x factory) OpenCluster(ctx context.Context, t driver.Target) (driver.ClusterChecker, error) {
	return x.f.ClusterOpener().OpenCluster(ctx, t)
}

type localNode struct {
	f        *Fleet
	key      string
	preserve bool
}

func (n *localNode) wait(ctx context.Context) error {
	return sleep(ctx, time.Duration(n.f.b.Latency))
}

func (n *localNode) Version(ctx context.Context) (string, error) {
	if err := n.wait(ctx); err != nil {
		return "", err
	}

	return n.f.Version(n.key)
}

func (n *localNode) Upgrade(ctx context.Context, image string) error {
	if err := n.wait(ctx); err != nil {
		return err
	}

	_, digest, _ := strings.Cut(image, "@")

	return n.f.UpgradeImage(n.key, VersionOf(image), digest, n.preserve)
}

func (n *localNode) Stage(ctx context.Context, image string) error {
	if err := n.wait(ctx); err != nil {
		return err
	}

	return n.f.Stage(n.key, image)
}

func (n *localNode) Switch(ctx context.Context, image string) error {
	if err := n.wait(ctx); err != nil {
		return err
	}

	return n.f.Switch(n.key, image, n.preserve)
}

func (n *localNode) Rollback(ctx context.Context) error {
	if err := n.wait(ctx); err != nil {
		return err
	}

	return n.f.Rollback(n.key)
}

func (n *localNode) Health(ctx context.Context) (driver.Health, error) {
	if err := n.wait(ctx); err != nil {
		return driver.Health{}, err
	}

	s, err := n.f.Services(n.key)

	return driver.Health{Services: s}, err
}

func (n *localNode) Close() error { return nil }

// Image implements driver.ImageReporter.
func (n *localNode) Image(ctx context.Context) (driver.ImageID, error) {
	if err := n.wait(ctx); err != nil {
		return driver.ImageID{}, err
	}

	return n.f.Image(n.key)
}

// ClusterOpener checks the simulated nodes' Kubernetes and etcd state in-process.
func (f *Fleet) ClusterOpener() driver.ClusterOpener { return clusterOpener{f} }

type clusterOpener struct{ f *Fleet }

func (o clusterOpener) OpenCluster(_ context.Context, t driver.Target) (driver.ClusterChecker, error) {
	return &localCluster{f: o.f, t: t}, nil
}

type localCluster struct {
	f *Fleet
	t driver.Target
}

func (c *localCluster) Cluster(ctx context.Context) (driver.ClusterStatus, error) {
	if err := sleep(ctx, time.Duration(c.f.b.Latency)); err != nil {
		return driver.ClusterStatus{}, err
	}

	return c.f.Cluster(c.t)
}

func (c *localCluster) Close() error { return nil }

// FellBackFrom implements driver.FallbackReporter like labos does.
func (n *localNode) FellBackFrom(ctx context.Context, version string) (bool, error) {
	if err := n.wait(ctx); err != nil {
		return false, err
	}

	return slices.Contains(n.f.FailedEntries(n.key), "sim-"+version+".efi"), nil
}
