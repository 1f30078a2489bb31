package talos

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/labfleet/labfleet/fleetctl/driver"
)

func kubeNode(name string, ready corev1.ConditionStatus, reason string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: ready, Reason: reason, Message: "container runtime network not ready"},
	}}}
}

func staticPod(app, node string, ready corev1.ConditionStatus) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: app + "-" + node, Namespace: "kube-system", Labels: map[string]string{"k8s-app": app}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}}},
	}
}

// The cluster reading through client-go: the Ready condition, the static
// pods of this node only, and the etcd list from the node API.
func TestClusterReadsKubernetes(t *testing.T) {
	kube := fake.NewClientset(
		kubeNode("cp1", corev1.ConditionTrue, ""),
		kubeNode("w1", corev1.ConditionFalse, "KubeletNotReady"),
		staticPod("kube-apiserver", "cp1", corev1.ConditionFalse),
		staticPod("kube-controller-manager", "cp1", corev1.ConditionTrue),
		staticPod("kube-scheduler", "cp1", corev1.ConditionTrue),
		staticPod("kube-scheduler", "cp2", corev1.ConditionTrue),
	)
	etcd := func(context.Context) ([]driver.EtcdMember, error) {
		return []driver.EtcdMember{{Hostname: "cp1"}}, nil
	}

	cp := driver.Target{Node: "cp1", Role: "controlplane", ControlPlanes: 1}
	st, err := (&cluster{kube: kube, t: cp, etcd: etcd}).Cluster(t.Context())
	require.NoError(t, err)
	assert.True(t, st.NodeReady)
	assert.Len(t, st.Pods, 3, "only the pods on cp1")
	assert.Equal(t, []string{"static pod kube-apiserver Running (ready=false)"}, st.Problems(cp))

	w := driver.Target{Node: "w1", Role: "worker"}
	st, err = (&cluster{kube: kube, t: w}).Cluster(t.Context())
	require.NoError(t, err)
	assert.Equal(t, []string{"kubernetes node w1 not Ready: KubeletNotReady: container runtime network not ready"}, st.Problems(w))

	_, err = (&cluster{kube: kube, t: driver.Target{Node: "gone", Role: "worker"}}).Cluster(t.Context())
	assert.ErrorContains(t, err, "reading kubernetes node gone")
}

func TestOpenClusterNeedsKubeconfig(t *testing.T) {
	dir := t.TempDir()
	tc := filepath.Join(dir, "talosconfig")
	require.NoError(t, os.WriteFile(tc, nil, 0o600))

	_, err := NewClusterOpener().OpenCluster(t.Context(), driver.Target{Cluster: "ber-1-a", Talosconfig: tc, Role: "worker"})
	assert.ErrorContains(t, err, "cluster ber-1-a: health.kubernetes needs the admin kubeconfig at "+filepath.Join(dir, "kubeconfig"))
}
