package driver_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/labfleet/labfleet/fleetctl/driver"
)

func TestWantMismatch(t *testing.T) {
	d1, d2 := "sha256:"+strings.Repeat("1", 64), "sha256:"+strings.Repeat("2", 64)
	s1, s2 := strings.Repeat("a", 64), strings.Repeat("b", 64)
	w := driver.Want{Digest: d1, Version: "v2", Schematic: s1}

	assert.Empty(t, w.Mismatch(driver.ImageID{Digest: d1, Version: "v2"}))
	assert.Equal(t, "node runs image "+d2+", want "+d1, w.Mismatch(driver.ImageID{Digest: d2, Version: "v2"}), "a digest decides alone")
	assert.Empty(t, w.Mismatch(driver.ImageID{Version: "v2", Schematic: s1}), "no digest: version + schematic")
	assert.Equal(t, "node runs schematic "+s2+", want "+s1, w.Mismatch(driver.ImageID{Version: "v2", Schematic: s2}))
	assert.Contains(t, w.Mismatch(driver.ImageID{Version: "v2"}), "node reports neither image digest nor schematic")
	assert.Equal(t, "node reports version v1, want v2", w.Mismatch(driver.ImageID{Version: "v1", Schematic: s1}))
	assert.Empty(t, driver.Want{Digest: d1, Version: "v2"}.Mismatch(driver.ImageID{Version: "v2"}), "no plan schematic: the version is all there is")
}

func TestClusterProblems(t *testing.T) {
	cp := driver.Target{Node: "cp1", Role: "controlplane", ControlPlanes: 3}
	pods := []driver.Pod{{App: "kube-apiserver", Phase: "Running", Ready: true}, {App: "kube-controller-manager", Phase: "Running", Ready: true}, {App: "kube-scheduler", Phase: "Running", Ready: true}}
	etcd := []driver.EtcdMember{{Hostname: "cp1"}, {Hostname: "cp2"}, {Hostname: "cp3"}}

	assert.Empty(t, driver.ClusterStatus{NodeReady: true, Pods: pods, Etcd: etcd}.Problems(cp))
	assert.Empty(t, driver.ClusterStatus{NodeReady: true}.Problems(driver.Target{Node: "w1", Role: "worker"}), "workers: Ready is all")

	assert.Equal(t, []string{"kubernetes node w1 not Ready: no Ready condition"}, driver.ClusterStatus{}.Problems(driver.Target{Node: "w1", Role: "worker"}))

	got := driver.ClusterStatus{NodeReady: true, Pods: pods[1:2], Etcd: []driver.EtcdMember{{Hostname: "cp2"}, {Hostname: "cp3"}, {Hostname: "cp1", Learner: true}}}.Problems(cp)
	assert.Equal(t, []string{
		"static pod kube-apiserver missing",
		"static pod kube-scheduler missing",
		"etcd learners not promoted: cp1",
		"etcd has 2 voting members (cp2, cp3), want 3",
		"etcd does not list cp1 as a member",
	}, got)
}
