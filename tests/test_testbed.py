"""The local Kubernetes testbed for real: a v1.36.3 API server, kwok GPU nodes, the LWS manager
with its webhooks, and both pinned Helm binaries. Every object is created in its own namespace, which is
deleted (and its pods waited for) before the next scenario, so GPU capacity is free again."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
WAIT_S = 180  # upper bound for a condition on a loaded 2-core machine; never asserted as a duration


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


@pytest.fixture(scope="session")
def kube(testbed):
    from kubernetes import client

    api = testbed.api_client()
    yield client.CoreV1Api(api), client.CustomObjectsApi(api), client.VersionApi(api)
    api.close()


def make_namespace(core) -> str:
    ns = f"tb-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    wait_for(f"service account default in {ns}", lambda: core.list_namespaced_service_account(
        ns, field_selector="metadata.name=default").items)
    return ns


def delete_namespace(core, ns: str) -> None:
    core.delete_namespace(ns)
    wait_for(f"pods of {ns} gone", lambda: not core.list_namespaced_pod(ns).items)


def gpu_holders(core) -> list[str]:
    """Pods (any namespace) that hold nvidia.com/gpu on a node: they would change what fits."""
    held = []
    for p in core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,status.phase!=Failed").items:
        if p.spec.node_name and any("nvidia.com/gpu" in ((c.resources and c.resources.limits) or {})
                                    for c in p.spec.containers):
            held.append(f"{p.metadata.namespace}/{p.metadata.name}")
    return held


def require_free_gpus(core) -> None:
    """The scenarios below need all 16 GPUs; another test's leftovers (or a concurrent session) would
    make them fail for the wrong reason, so wait a little and then say who holds them."""
    try:
        wait_for("no pod holding GPUs", lambda: not gpu_holders(core), timeout=90)
    except AssertionError:
        pytest.fail(f"GPUs of the testbed are held by other pods: {gpu_holders(core)} "
                    "(a test that does not clean up, or another session on the same cluster)")


def lws_body(name: str, size: int, gpus: int = 8) -> dict:
    return {
        "apiVersion": f"{LWS_GROUP}/{LWS_VERSION}", "kind": "LeaderWorkerSet", "metadata": {"name": name},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {
            "size": size, "restartPolicy": "RecreateGroupOnPodRestart",
            "workerTemplate": {"spec": {"containers": [{
                "name": "main", "image": "busybox:1.36", "command": ["sleep", "infinity"],
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}}},
    }


def ready(pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def lws_pods(core, ns: str, name: str) -> list:
    return sorted(core.list_namespaced_pod(ns, label_selector=f"{NAME_LABEL}={name}").items,
                  key=lambda p: p.metadata.name)


def test_apiserver_reports_pinned_version(kube):
    _, _, version = kube
    assert version.get_code().git_version == "v1.36.3"


def test_nodes_ready_with_eight_gpus(kube, testbed):
    core, _, _ = kube
    nodes = {n.metadata.name: n for n in core.list_node(label_selector="type=kwok").items}
    assert sorted(nodes) == sorted(testbed.nodes) and len(nodes) == 2
    for n in nodes.values():
        assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
        assert n.status.capacity["nvidia.com/gpu"] == "8"
        assert n.status.allocatable["nvidia.com/gpu"] == "8"
        assert int(n.status.allocatable["rdma/ib"]) >= 1
        assert n.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert n.metadata.labels["kubernetes.io/hostname"] == n.metadata.name


@pytest.fixture(scope="class")
def group(kube):
    """One LWS of size 2 (8 GPUs per pod) in a fresh namespace, Ready; deleted after the class."""
    core, custom, _ = kube
    require_free_gpus(core)
    ns, name = make_namespace(core), "grp"
    custom.create_namespaced_custom_object(LWS_GROUP, LWS_VERSION, ns, LWS_PLURAL, lws_body(name, 2))
    wait_for("2 LWS pods Ready", lambda: len(p := lws_pods(core, ns, name)) == 2 and all(map(ready, p)))
    yield core, custom, ns, name
    delete_namespace(core, ns)


class TestLeaderWorkerSet:
    def test_group_on_two_gpu_nodes_and_ready(self, group, testbed):
        core, custom, ns, name = group
        pods = lws_pods(core, ns, name)
        assert [p.metadata.name for p in pods] == [f"{name}-0", f"{name}-0-1"]
        assert {p.spec.node_name for p in pods} == set(testbed.nodes)
        assert all(ready(p) for p in pods)
        lws = wait_for("LWS readyReplicas 1", lambda: (o := custom.get_namespaced_custom_object(
            LWS_GROUP, LWS_VERSION, ns, LWS_PLURAL, name)).get("status", {}).get("readyReplicas") == 1 and o)
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2

    def test_webhooks_inject_labels_and_env(self, group):
        core, _, ns, name = group
        leader, worker = lws_pods(core, ns, name)
        for pod, index in ((leader, "0"), (worker, "1")):
            labels = pod.metadata.labels
            assert labels[NAME_LABEL] == name
            assert labels["leaderworkerset.sigs.k8s.io/group-index"] == "0"
            assert labels["leaderworkerset.sigs.k8s.io/worker-index"] == index
            assert labels["leaderworkerset.sigs.k8s.io/group-key"]
            env = {e.name: e.value for e in pod.spec.containers[0].env or []}
            assert env["LWS_GROUP_SIZE"] == "2"
            assert env["LWS_WORKER_INDEX"] == index
            assert env["LWS_LEADER_ADDRESS"].startswith(f"{name}-0.{name}.{ns}")
        assert worker.metadata.labels["leaderworkerset.sigs.k8s.io/group-key"] == \
            leader.metadata.labels["leaderworkerset.sigs.k8s.io/group-key"]

    def test_deleting_worker_recreates_the_whole_group(self, group):
        core, _, ns, name = group
        leader, worker = lws_pods(core, ns, name)
        old = {leader.metadata.uid, worker.metadata.uid}
        core.delete_namespaced_pod(worker.metadata.name, ns)

        def regrouped():
            pods = lws_pods(core, ns, name)
            return (len(pods) == 2 and not old & {p.metadata.uid for p in pods}
                    and all(ready(p) for p in pods) and pods)

        pods = wait_for("a new leader and a new worker, both Ready", regrouped)
        assert [p.metadata.name for p in pods] == [f"{name}-0", f"{name}-0-1"]


def test_lws_needing_three_gpu_nodes_stays_pending(kube):
    core, custom, _ = kube
    require_free_gpus(core)
    ns, name = make_namespace(core), "big"
    try:
        custom.create_namespaced_custom_object(LWS_GROUP, LWS_VERSION, ns, LWS_PLURAL, lws_body(name, 3))
        wait_for("3 LWS pods", lambda: len(lws_pods(core, ns, name)) == 3)

        def unschedulable():
            events = core.list_namespaced_event(ns, field_selector="reason=FailedScheduling").items
            return [e for e in events if "nvidia.com/gpu" in (e.message or "")]

        events = wait_for("FailedScheduling naming nvidia.com/gpu", unschedulable)
        pods = lws_pods(core, ns, name)
        pending = [p for p in pods if not p.spec.node_name]
        assert len(pending) == 1 and pending[0].status.phase == "Pending"
        assert events[0].involved_object.name == pending[0].metadata.name
        assert "Insufficient nvidia.com/gpu" in events[0].message
        assert len({p.spec.node_name for p in pods if p.spec.node_name}) == 2
        lws = custom.get_namespaced_custom_object(LWS_GROUP, LWS_VERSION, ns, LWS_PLURAL, name)
        assert not lws.get("status", {}).get("readyReplicas")
    finally:
        delete_namespace(core, ns)


@pytest.mark.parametrize("binary,version", [("helm", "v4.2.4"), ("helm3", "v3.21.4")])
def test_pinned_helm_versions(testbed, binary, version):
    out = subprocess.run([str(getattr(testbed, binary)), "version", "--template", "{{.Version}}"],
                         capture_output=True, text=True, env=testbed.env, check=True, timeout=60)
    assert out.stdout.strip() == version


def test_failed_start_stops_what_it_started_and_shows_logs(testbed, tmp_path):
    """A component that dies during `up` fails it with that component's log, and nothing is left running."""
    from dsv3ctl.adapters import testbed as tb
    from dsv3ctl.errors import RuntimeFailure

    bin_dir = tmp_path / "tools" / "bin"
    bin_dir.mkdir(parents=True)
    for f in testbed.bin_dir.iterdir():
        (bin_dir / f.name).symlink_to(f)
    (bin_dir.parent / "share").symlink_to(testbed.share_dir)
    (bin_dir / "kube-scheduler").unlink()
    (bin_dir / "kube-scheduler").write_text("#!/bin/sh\necho 'scheduler: simulated crash' >&2\nexit 3\n")
    (bin_dir / "kube-scheduler").chmod(0o755)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeFailure) as e:
        tb.up(run_dir=run_dir, bin_dir=bin_dir, timeout_s=120)
    assert "kube-scheduler" in e.value.message and "simulated crash" in e.value.message
    state = tb._read_state(run_dir)
    assert state["up"] is False and state["pids"] == {}
    assert not tb.status(run_dir)["healthy"]
    logs = {p.name for p in (run_dir / "logs").iterdir()}
    assert {"etcd.log", "kube-apiserver.log", "kube-scheduler.log"} <= logs
