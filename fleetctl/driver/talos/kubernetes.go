package talos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/labfleet/labfleet/fleetctl/driver"
)

// KubeconfigFile is the admin kubeconfig kept beside a cluster's
// talosconfig in its credentials folder (what `talosctl kubeconfig DIR`
// writes).
const KubeconfigFile = "kubeconfig"

// KubeconfigPath is where the cluster checks read the kubeconfig of the
// cluster whose talosconfig is at talosconfig.
func KubeconfigPath(talosconfig string) string {
	return filepath.Join(filepath.Dir(talosconfig), KubeconfigFile)
}

// ClusterOpener checks a node's cluster: the Kubernetes node and static pods
// through client-go with the cluster's kubeconfig, and etcd's members
// through the node's machine API (EtcdMemberList) with its talosconfig.
type ClusterOpener struct{}

// NewClusterOpener returns a ClusterOpener.
func NewClusterOpener() *ClusterOpener { return &ClusterOpener{} }

// OpenCluster implements driver.ClusterOpener.
func (*ClusterOpener) OpenCluster(ctx context.Context, t driver.Target) (driver.ClusterChecker, error) {
	path := KubeconfigPath(t.Talosconfig)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("cluster %s: health.kubernetes needs the admin kubeconfig at %s (talosctl kubeconfig %s): %w", t.Cluster, path, filepath.Dir(path), err)
	}

	rest, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("reading kubeconfig %s: %w", path, err)
	}

	kube, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client from %s: %w", path, err)
	}

	c := &cluster{kube: kube, t: t}

	if t.Role == "controlplane" {
		tc, err := client.New(ctx, client.WithConfigFromFile(t.Talosconfig), client.WithEndpoints(t.Endpoint))
		if err != nil {
			return nil, fmt.Errorf("connecting to %s: %w", t.Endpoint, err)
		}

		c.closeFn = tc.Close
		c.etcd = func(ctx context.Context) ([]driver.EtcdMember, error) { return etcdMembers(ctx, tc) }
	}

	return c, nil
}

// OpenCluster makes the Factory a driver.ClusterOpener too, so the engine
// finds the cluster checks with the driver.
func (f *Factory) OpenCluster(ctx context.Context, t driver.Target) (driver.ClusterChecker, error) {
	ep, err := f.endpoint(ctx, t)
	if err != nil {
		return nil, err
	}

	t.Endpoint = ep

	return NewClusterOpener().OpenCluster(ctx, t)
}

func etcdMembers(ctx context.Context, c *client.Client) ([]driver.EtcdMember, error) {
	// QueryLocal false: the member list as the cluster sees it, not the
	// node's own view of itself.
	resp, err := c.EtcdMemberList(ctx, &machineapi.EtcdMemberListRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing etcd members: %w", err)
	}

	var out []driver.EtcdMember

	for _, m := range resp.GetMessages() {
		for _, mem := range m.GetMembers() {
			out = append(out, driver.EtcdMember{Hostname: mem.GetHostname(), Learner: mem.GetIsLearner()})
		}
	}

	return out, nil
}

type cluster struct {
	kube    kubernetes.Interface
	t       driver.Target
	etcd    func(context.Context) ([]driver.EtcdMember, error)
	closeFn func() error
}

// Cluster implements driver.ClusterChecker. The Kubernetes node is looked up
// by the inventory's node name, which must be its hostname (Talos names the
// Kubernetes node after it).
func (c *cluster) Cluster(ctx context.Context) (driver.ClusterStatus, error) {
	var st driver.ClusterStatus

	kn, err := c.kube.CoreV1().Nodes().Get(ctx, c.t.Node, metav1.GetOptions{})
	if err != nil {
		return st, fmt.Errorf("reading kubernetes node %s: %w", c.t.Node, err)
	}

	for _, cond := range kn.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			st.NodeReady = cond.Status == corev1.ConditionTrue
			if !st.NodeReady {
				st.NodeReason = cond.Reason + ": " + cond.Message
			}
		}
	}

	if c.t.Role != "controlplane" {
		return st, nil
	}

	pods, err := c.kube.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", c.t.Node).String(),
	})
	if err != nil {
		return st, fmt.Errorf("listing kube-system pods on %s: %w", c.t.Node, err)
	}

	for _, p := range pods.Items {
		// Filtered here too: not every API server (or fake) applies the
		// field selector.
		app := p.Labels["k8s-app"]
		if p.Spec.NodeName != c.t.Node || !slices.Contains(driver.ControlPlanePods, app) {
			continue
		}

		ready := false

		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady {
				ready = cond.Status == corev1.ConditionTrue
			}
		}

		st.Pods = append(st.Pods, driver.Pod{App: app, Phase: string(p.Status.Phase), Ready: ready})
	}

	if c.etcd == nil {
		return st, errors.New("no etcd member list for a control plane node")
	}

	st.Etcd, err = c.etcd(ctx)

	return st, err
}

func (c *cluster) Close() error {
	if c.closeFn != nil {
		return c.closeFn()
	}

	return nil
}
