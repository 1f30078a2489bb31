package driver

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// ImageID is what a node says about the image it runs. Talos reports the
// installer image's digest where it knows it; where it does not, the version
// tag together with the schematic ID identifies the image instead.
type ImageID struct {
	Digest    string `json:"digest,omitempty"`    // sha256:<hex> of the installer image; "" if unknown
	Version   string `json:"version,omitempty"`   // the version tag
	Schematic string `json:"schematic,omitempty"` // image-factory schematic ID; "" if unknown
}

// ImageReporter is implemented by nodes that can say which image they run,
// not only its tag. The gate then compares digests, so a rebuild published
// under the same tag is installed rather than taken for "already at".
type ImageReporter interface {
	Image(ctx context.Context) (ImageID, error)
}

// Want is the image the plan installs.
type Want struct {
	Digest    string // from the plan's image reference
	Version   string
	Schematic string // optional plan field; "" does not check it
}

// Mismatch says why id is not the wanted image, "" when it is. A node that
// reports a digest is judged by it alone; one that reports none by version
// and, if the plan names one, schematic.
func (w Want) Mismatch(id ImageID) string {
	if id.Digest != "" {
		if id.Digest != w.Digest {
			return fmt.Sprintf("node runs image %s, want %s", id.Digest, w.Digest)
		}

		return ""
	}

	if id.Version != w.Version {
		return fmt.Sprintf("node reports version %s, want %s", id.Version, w.Version)
	}

	if w.Schematic != "" && id.Schematic != w.Schematic {
		if id.Schematic == "" {
			return "node reports neither image digest nor schematic; the plan's schematic " + w.Schematic + " cannot be confirmed"
		}

		return fmt.Sprintf("node runs schematic %s, want %s", id.Schematic, w.Schematic)
	}

	return ""
}

// ControlPlanePods are the static pods every Talos control plane node runs
// (label k8s-app in kube-system).
var ControlPlanePods = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// Pod is one pod as the cluster reports it.
type Pod struct {
	App   string `json:"app"`   // k8s-app label
	Phase string `json:"phase"` // Running, Pending, ...
	Ready bool   `json:"ready"` // the Ready condition
}

// EtcdMember is one etcd member as the node lists it.
type EtcdMember struct {
	Hostname string `json:"hostname"`
	Learner  bool   `json:"learner,omitempty"`
}

// ClusterStatus is what the cluster says about one node after its upgrade.
type ClusterStatus struct {
	// NodeReady is the Kubernetes node's Ready condition; kubelet reports it
	// false while the CNI is not ready, so it covers the CNI too.
	NodeReady bool `json:"nodeReady"`
	// NodeReason is the condition's reason or message when not ready.
	NodeReason string `json:"nodeReason,omitempty"`
	// Pods are the control plane static pods on the node (control plane nodes only).
	Pods []Pod `json:"pods,omitempty"`
	// Etcd lists the members (control plane nodes only).
	Etcd []EtcdMember `json:"etcd,omitempty"`
}

// ClusterChecker reports a node's Kubernetes and etcd state.
type ClusterChecker interface {
	Cluster(ctx context.Context) (ClusterStatus, error)
	Close() error
}

// ClusterOpener opens a ClusterChecker for a node; the engine uses one when
// the target has cluster credentials (Target.Kubeconfig).
type ClusterOpener interface {
	OpenCluster(ctx context.Context, t Target) (ClusterChecker, error)
}

// Problems lists why a node with status s is not healthy as a member of its
// cluster, empty when it is: the Kubernetes node must be Ready and, on a
// control plane node, every static pod in ControlPlanePods running and ready
// and etcd must list exactly controlPlanes voting members including this
// node (by hostname).
func (s ClusterStatus) Problems(t Target) []string {
	var out []string

	if !s.NodeReady {
		why := s.NodeReason
		if why == "" {
			why = "no Ready condition"
		}

		out = append(out, "kubernetes node "+t.Node+" not Ready: "+why)
	}

	if t.Role != "controlplane" {
		return out
	}

	for _, app := range ControlPlanePods {
		i := slices.IndexFunc(s.Pods, func(p Pod) bool { return p.App == app })

		switch {
		case i < 0:
			out = append(out, "static pod "+app+" missing")
		case s.Pods[i].Phase != "Running" || !s.Pods[i].Ready:
			out = append(out, fmt.Sprintf("static pod %s %s (ready=%t)", app, s.Pods[i].Phase, s.Pods[i].Ready))
		}
	}

	var voters, learners []string

	for _, m := range s.Etcd {
		if m.Learner {
			learners = append(learners, m.Hostname)
		} else {
			voters = append(voters, m.Hostname)
		}
	}

	if len(learners) > 0 {
		out = append(out, "etcd learners not promoted: "+strings.Join(learners, ", "))
	}

	if t.ControlPlanes > 0 && len(voters) != t.ControlPlanes {
		out = append(out, fmt.Sprintf("etcd has %d voting members (%s), want %d", len(voters), strings.Join(voters, ", "), t.ControlPlanes))
	}

	if !slices.Contains(voters, t.Node) {
		out = append(out, "etcd does not list "+t.Node+" as a member")
	}

	return out
}
