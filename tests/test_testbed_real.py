"""Real nodes of the testbed (kubelet + containerd + runc, kube-proxy, CoreDNS): containers really run.

The image is a one-layer OCI archive written here around Debian's static busybox (``make sys-deps``),
imported into every real node with ``Testbed.load_image``. Pods opt in to real nodes with the taint's
toleration and the ``dsv3ctl.io/node-kind=real`` node selector. The last test stops the real nodes and
compares the host facts with the snapshot taken before they started, then starts them again.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from dsv3ctl.adapters import realnodes

pytestmark = [pytest.mark.cluster, pytest.mark.realnodes]

BUSYBOX = Path("/bin/busybox")
IMAGE = "localhost/dsv3ctl-busybox:test"
WAIT_S = 120
LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"




@pytest.fixture(scope="module")
def real(testbed, tmp_path_factory):
    if not testbed.real_nodes:
        pytest.fail("the session testbed has no real nodes although a realnodes test was collected")
    if not BUSYBOX.is_file():
        pytest.skip("busybox-static is not installed (make sys-deps)")
    applets = ("sh", "echo", "cat", "sleep", "httpd", "wget", "nslookup", "hostname", "mkdir", "kill")
    archive = realnodes.oci_archive(
        tmp_path_factory.mktemp("img") / "busybox.oci.tar", IMAGE,
        {"/bin/busybox": (BUSYBOX.read_bytes(), 0o755)}, ["/bin/sh"],
        symlinks={f"/bin/{a}": "busybox" for a in applets}, dirs=("tmp", "etc", "www"))
    names = testbed.load_image(archive)
    assert IMAGE in names, names
    from kubernetes import client

    api = testbed.api_client()
    core = client.CoreV1Api(api)
    ns = f"real-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    wait_for("default service account", lambda: core.list_namespaced_service_account(
        ns, field_selector="metadata.name=default").items)
    yield testbed, core, client.CustomObjectsApi(api), ns
    core.delete_namespace(ns)
    api.close()


def pod_body(name: str, command: str, node: str | None = None, labels: dict | None = None,
             probe: dict | None = None, restart: str = "Always") -> dict:
    c: dict[str, Any] = {"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": ["/bin/sh", "-c", command]}
    if probe:
        c["readinessProbe"] = probe
    spec: dict[str, Any] = {"containers": [c], "tolerations": [realnodes.TOLERATION], "restartPolicy": restart,
                            "nodeSelector": dict(realnodes.NODE_SELECTOR), "terminationGracePeriodSeconds": 1}
    if node:
        spec["nodeSelector"]["kubernetes.io/hostname"] = node
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def pod_ready(core, ns: str, name: str) -> Any:
    p = core.read_namespaced_pod(name, ns)
    return p if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []) else None


def test_real_nodes_registered_with_gpus_taint_and_labels(real):
    tb, core, _, _ = real
    assert tb.real_nodes == [realnodes.node_name(0), realnodes.node_name(1)]
    for name in tb.real_nodes:
        n = core.read_node(name)
        assert n.status.node_info.container_runtime_version == "containerd://2.3.7"
        assert n.status.allocatable["nvidia.com/gpu"] == "8" and n.status.allocatable["rdma/ib"] == "8"
        assert n.metadata.labels[realnodes.NODE_KIND_LABEL] == "real"
        assert n.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert [(t.key, t.value, t.effect) for t in n.spec.taints] == [(realnodes.TAINT_KEY, "true", "NoSchedule")]
        assert any(a.type == "InternalIP" and a.address.startswith("10.250.0.") for a in n.status.addresses)


def test_pod_runs_probe_passes_and_logs(real):
    tb, core, _, ns = real
    core.create_namespaced_pod(ns, pod_body(
        "web", "echo hello-from-a-real-container; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www",
        node=tb.real_nodes[0], labels={"app": "web"},
        probe={"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}))
    p = wait_for("pod web Ready (readiness probe passed)", lambda: pod_ready(core, ns, "web"))
    assert p.spec.node_name == tb.real_nodes[0]
    assert p.status.pod_ip.startswith("10.245.0.")
    logs = subprocess.run([str(tb.kubectl), "-n", ns, "logs", "web"], env=tb.env, capture_output=True, text=True,
                          timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert "hello-from-a-real-container" in logs.stdout


def test_clusterip_service_and_dns_from_the_other_node(real):
    tb, core, _, ns = real
    wait_for("pod web Ready", lambda: pod_ready(core, ns, "web"))
    core.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    fqdn = f"web.{ns}.svc.cluster.local"
    script = (f"for i in $(seq 60); do echo try $i; wget -q -O - http://{fqdn}/index.html && nslookup {fqdn} "
              "&& exit 0; sleep 1; done; exit 1")
    core.create_namespaced_pod(ns, pod_body("client", script, node=tb.real_nodes[1], restart="Never"))
    try:
        phase = wait_for("client pod finished", lambda: core.read_namespaced_pod("client", ns).status.phase
                         in ("Succeeded", "Failed") and core.read_namespaced_pod("client", ns).status.phase,
                         timeout=240)
    except AssertionError as e:
        raise AssertionError(f"{e}\nclient log:\n{core.read_namespaced_pod_log('client', ns)}") from None
    out = core.read_namespaced_pod_log("client", ns)
    assert phase == "Succeeded", out
    svc_ip = core.read_namespaced_service("web", ns).spec.cluster_ip
    assert "\nok\n" in out and svc_ip in out, out


def lws_pods(core, ns: str, name: str) -> list:
    return core.list_namespaced_pod(ns, label_selector=f"leaderworkerset.sigs.k8s.io/name={name}").items


def test_lws_group_spreads_over_both_real_nodes_and_is_recreated(real):
    tb, core, custom, ns = real
    name = "grp"
    tmpl = pod_body("x", "echo $LWS_LEADER_ADDRESS; exec sleep 100000",
                    probe={"exec": {"command": ["/bin/sh", "-c", 'test -n "$LWS_LEADER_ADDRESS"']},
                           "periodSeconds": 1})["spec"]
    tmpl["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"leaderworkerset.sigs.k8s.io/name": name}},
        "topologyKey": "kubernetes.io/hostname"}]}}
    custom.create_namespaced_custom_object(LWS_GROUP, LWS_VERSION, ns, LWS_PLURAL, {
        "apiVersion": f"{LWS_GROUP}/{LWS_VERSION}", "kind": "LeaderWorkerSet", "metadata": {"name": name},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "restartPolicy": "RecreateGroupOnPodRestart",
                                                         "workerTemplate": {"spec": tmpl}}}})

    def group_ready() -> list | None:
        pods = lws_pods(core, ns, name)
        ok = len(pods) == 2 and all(p.metadata.deletion_timestamp is None and any(
            c.type == "Ready" and c.status == "True" for c in p.status.conditions or []) for p in pods)
        return pods if ok else None

    pods = wait_for("LWS group of 2 Ready", group_ready)
    assert sorted(p.spec.node_name for p in pods) == tb.real_nodes
    before = {p.metadata.uid for p in pods}
    worker = next(p for p in pods if p.metadata.name.endswith("-1"))
    cid = worker.status.container_statuses[0].container_id.split("://", 1)[1]
    node = tb.real_nodes.index(worker.spec.node_name)
    sock = realnodes.containerd_socket(tb.run_dir, node)
    kill = subprocess.run([str(tb.bin_dir / "ctr"), "--address", str(sock), "-n", "k8s.io", "tasks", "kill",
                           "-s", "SIGKILL", cid], capture_output=True, text=True, timeout=30)
    assert kill.returncode == 0, kill.stderr
    pods = wait_for("LWS group recreated (new pod UIDs) and Ready",
                    lambda: (g := group_ready()) and not before & {p.metadata.uid for p in g} and g)
    assert sorted(p.spec.node_name for p in pods) == tb.real_nodes


def test_stopping_real_nodes_restores_the_host(real):
    """Stop the real nodes, compare processes, mounts, links, iptables, cgroups, sysctls and shared paths
    with the snapshot recorded before they started; then start them again for later tests."""
    from dsv3ctl.adapters import testbed as tbm

    tb, _, _, _ = real
    state = tbm._read_state(tb.run_dir)
    before = state["real"]["host_before"]
    # the kubelets did change the host while running (else this comparison would prove nothing)
    during = realnodes.host_snapshot(tb.bin_dir, tb.run_dir)
    assert during["links"] != before["links"] and during["mounts"] != before["mounts"]
    assert during["iptables"] != before["iptables"] and during["cgroups"] != before["cgroups"]
    tbm.stop_real_nodes(tb.run_dir)
    after = realnodes.host_snapshot(tb.bin_dir, tb.run_dir)
    diffs = {k: (sorted(set(before[k]) ^ set(after[k])) if isinstance(before[k], list)
                 else {n: (before[k].get(n), after[k].get(n)) for n in set(before[k]) | set(after[k])
                       if before[k].get(n) != after[k].get(n)})
             for k in before}
    assert not any(diffs.values()), {k: v for k, v in diffs.items() if v}
    assert not (tb.run_dir / "real").exists()
    assert shutil.which("ip")
    tbm.start_real_nodes(tb.run_dir, len(tb.real_nodes))
    tb.state = tbm._read_state(tb.run_dir)
    assert tb.real_nodes and tbm.healthy(tb.run_dir)
