"""`dsv3ctl deploy / status / logs / undeploy` on the local cluster (kwok GPU nodes + the LWS manager):
the default spec reaches Ready on 2 fake 8-GPU nodes; a 3-node spec fails fast with a reason; a deleted
worker brings its group back; an upgrade rolls the group and keeps the SSH key; undeploy leaves nothing."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

pytestmark = pytest.mark.cluster

NS = "dsv3-test"


@pytest.fixture
def kenv(testbed, monkeypatch):
    """The testbed's environment; afterwards every release left in NS is uninstalled, so a failed test never
    keeps the fake GPUs from the tests that follow (they share one cluster per session)."""
    for k, v in testbed.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DSV3CTL_HELM", str(testbed.helm))
    yield testbed
    left = subprocess.run([str(testbed.helm), "list", "-n", NS, "-q"], capture_output=True, text=True,
                          check=False, env=testbed.env).stdout.split()
    for rel in left:
        subprocess.run([str(testbed.helm), "uninstall", rel, "-n", NS, "--wait", "--timeout", "120s"],
                       capture_output=True, check=False, env=testbed.env)
    if left:
        subprocess.run([str(testbed.kubectl), "-n", NS, "delete", "pod", "--all", "--wait=true", "--timeout=60s"],
                       capture_output=True, check=False, env=testbed.env)


def _kubectl(tb, *args: str) -> str:
    return subprocess.run([str(tb.kubectl), *args], capture_output=True, text=True, check=True, env=tb.env).stdout


def _uid(tb, pod: str) -> str:
    """The pod's metadata.uid, or "" while no pod of that name exists."""
    r = subprocess.run([str(tb.kubectl), "-n", NS, "get", "pod", pod, "--ignore-not-found", "-o",
                        "jsonpath={.metadata.uid}"], capture_output=True, text=True, check=False, env=tb.env)
    return r.stdout.strip()


def _server_dry_run(tb, files) -> subprocess.CompletedProcess[str]:
    args = [str(tb.kubectl), "apply", "--server-side", "--dry-run=server", "-n", NS]
    for f in files:
        args += ["-f", str(f)]
    return subprocess.run(args, capture_output=True, text=True, check=False, env=tb.env)


def test_render_matrix_server_side_dry_run(kenv, run_cli, write_spec, tmp_path):
    """The API server (CRD schema) and the LWS webhooks accept every rendered object."""
    from test_chart_render import MATRIX, _spec

    subprocess.run([str(kenv.kubectl), "create", "namespace", NS], capture_output=True, env=kenv.env, check=False)
    for case in MATRIX:
        out = tmp_path / "-".join(map(str, case))
        r = run_cli("render", "--spec", write_spec(_spec(*case), f"{out.name}.yaml"), "--out", out, "-n", NS)
        assert r.code == 0, r.err
        files = [f for f in sorted(out.glob("[0-9][0-9]-*.yaml")) if "-pod-" not in f.name]
        d = _server_dry_run(kenv, files)
        assert d.returncode == 0, f"{case}: {d.stderr}"
        assert "leaderworkerset.leaderworkerset.x-k8s.io/" in d.stdout


def test_lws_webhook_rejects_what_only_it_checks(kenv, run_cli, tmp_path):
    import yaml

    r = run_cli("render", "--out", tmp_path / "o", "-n", NS)
    assert r.code == 0
    f = next((tmp_path / "o").glob("*-leaderworkerset-*.yaml"))
    o = yaml.safe_load(f.read_text())
    o["spec"]["leaderWorkerTemplate"]["size"] = 0
    f.write_text(yaml.safe_dump(o))
    d = _server_dry_run(kenv, [f])
    assert d.returncode != 0 and "size" in d.stderr


def test_deploy_lifecycle(kenv, run_cli, write_spec, tmp_path):
    rel = "life"
    r = run_cli("deploy", "-n", NS, "--release", rel, "--create-namespace", "--timeout", "240")
    assert r.code == 0, r.out + r.err
    assert "Ready" in r.out

    r = run_cli("status", "-n", NS, "--release", rel, "--output", "json")
    assert r.code == 0, r.err
    st = json.loads(r.out)
    assert st["ready"] and st["replicas"] == 1 and st["size"] == 2
    pods = st["groups"][0]["pods"]
    assert [p["role"] for p in pods] == ["leader", "worker"] and all(p["ready"] for p in pods)
    assert len({p["node"] for p in pods}) == 2  # one pod per node
    assert st["endpoints"]["ports"] == {"http": 8000, "grpc": 8001, "metrics": 8002}

    secret = lambda: _kubectl(kenv, "-n", NS, "get", "secret", "life-dsv3-ssh", "-o", "jsonpath={.data}")  # noqa: E731
    key_before = secret()
    assert "ssh-privatekey" in key_before

    # a deleted worker: LWS recreates the whole group (RecreateGroupOnPodRestart: the pod controller deletes
    # the leader when a worker is deleted, lws v0.9.0 pkg/controllers/pod_controller.go:204-265
    # handleRestartPolicy), so the leader and the worker come back as new pods (new UIDs, same names)
    uids = lambda: {p["name"]: _uid(kenv, p["name"]) for p in pods}  # noqa: E731
    before = uids()
    assert all(before.values()), before
    worker = pods[1]["name"]
    # a finalizer holds the deleted worker in Terminating, as a kubelet does during the grace period: kwok
    # removes a deleted pod at once, sometimes before the LWS pod controller has seen its deletionTimestamp
    _kubectl(kenv, "-n", NS, "patch", "pod", worker, "--type=merge", "-p",
             '{"metadata":{"finalizers":["dsv3ctl.io/test-hold"]}}')
    _kubectl(kenv, "-n", NS, "delete", "pod", worker, "--wait=false")
    leader = pods[0]["name"]
    hold = time.monotonic() + 30
    while time.monotonic() < hold and _uid(kenv, leader) == before[leader]:
        time.sleep(0.5)
    _kubectl(kenv, "-n", NS, "patch", "pod", worker, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    deadline = time.monotonic() + 120
    after: dict[str, str] = {}
    while time.monotonic() < deadline:
        after = uids()
        r = run_cli("status", "-n", NS, "--release", rel, "--output", "json")
        st2 = json.loads(r.out) if r.code == 0 else {"ready": False}
        if st2["ready"] and all(after[n] and after[n] != before[n] for n in before):
            break
        time.sleep(2)
    else:
        pytest.fail(f"group not recreated within 120 s: UIDs before {before}, now {after}, status {st2}")
    assert [p["name"] for p in st2["groups"][0]["pods"]] == [p["name"] for p in pods]
    pods = st2["groups"][0]["pods"]

    # upgrade with a changed value: the group is rolled (new template hash), the SSH key stays
    hash_before = _kubectl(kenv, "-n", NS, "get", "pod", pods[0]["name"], "-o",
                           "jsonpath={.metadata.annotations.checksum/spec}")
    p = write_spec({"serving": {"max_batch_size": 8}})
    r = run_cli("deploy", "--spec", p, "-n", NS, "--release", rel, "--timeout", "240")
    assert r.code == 0, r.out + r.err
    r = run_cli("status", "-n", NS, "--release", rel, "--output", "json")
    st3 = json.loads(r.out)
    leader = st3["groups"][0]["pods"][0]["name"]
    hash_after = _kubectl(kenv, "-n", NS, "get", "pod", leader, "-o", "jsonpath={.metadata.annotations.checksum/spec}")
    assert hash_after and hash_after != hash_before
    assert secret() == key_before

    r = run_cli("logs", "leader", "-n", NS, "--release", rel, "-f")
    # kwok runs no containers, so the kubelet-less API cannot serve a log: one sentence, no traceback, no JSON
    assert r.code == 1 and "Traceback" not in r.err, r.err
    assert "kwok fake node" in r.err and '"kind"' not in r.err and "{" not in r.err, r.err

    r = run_cli("undeploy", "-n", NS, "--release", rel, "--timeout", "120", "--output", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["left"] == []
    left = _kubectl(kenv, "-n", NS, "get", "all,secret,configmap,leaderworkerset", "-l",
                    f"app.kubernetes.io/instance={rel}", "-o", "name")
    assert left.strip() == ""


def test_three_nodes_fail_fast(kenv, run_cli, write_spec):
    # 3 x 8 GPUs (tp=24 would not divide the 128 heads, so tp=8 x pp=3 in llmapi mode)
    p = write_spec({"parallelism": {"nodes": 3, "tp": 8, "pp": 3}, "serving": {"mode": "llmapi"}})
    r = run_cli("deploy", "--spec", p, "-n", NS, "--release", "three", "--create-namespace", "--timeout", "120")
    assert r.code == 2
    assert "gpu_nodes" in r.err and "need 3" in r.out + r.err
    # past the preflight, the scheduler's reason ends the wait (a timeout would say "not Ready after")
    r = run_cli("deploy", "--spec", p, "-n", NS, "--release", "three", "--create-namespace", "--skip-preflight",
                "--timeout", "120", "--grace", "10")
    try:
        assert r.code == 1
        assert "Unschedulable" in r.err, r.err
        assert "nvidia.com/gpu" in r.err or "anti-affinity" in r.err, r.err
    finally:
        run_cli("undeploy", "-n", NS, "--release", "three", "--timeout", "120")


def test_preflight_refuses_when_the_gpus_are_held(kenv, run_cli):
    """The default release takes both 8-GPU nodes; a second release is refused by preflight (exit 2, nothing
    installed), naming the pods that hold the GPUs, instead of failing on FailedScheduling later."""
    r = run_cli("deploy", "-n", NS, "--release", "hold", "--create-namespace", "--timeout", "240")
    try:
        assert r.code == 0, r.out + r.err
        assert "preflight   ok gpu_nodes: 2 node(s) with >= 8 free nvidia.com/gpu (of 2 with" in r.out, r.out
        r = run_cli("deploy", "-n", NS, "--release", "other", "--timeout", "60", "--grace", "5")
        assert r.code == 2, r.out + r.err
        text = r.out + r.err
        assert "gpu_nodes: 0 node(s) with >= 8 free nvidia.com/gpu (of 2 with 8 allocatable" in text, text
        assert f"{NS}/hold-dsv3-0 (8, release hold)" in text and f"{NS}/hold-dsv3-0-1 (8, release hold)" in text
        assert "--skip-preflight" in text and "Traceback" not in text
        assert "other" not in _kubectl(kenv, "-n", NS, "get", "leaderworkerset", "-o", "name")
        # the holder itself may still upgrade: its own pods do not count against it
        r = run_cli("deploy", "-n", NS, "--release", "hold", "--dry-run")
        assert r.code == 0, r.out + r.err
    finally:
        run_cli("undeploy", "-n", NS, "--release", "hold", "--timeout", "120")
