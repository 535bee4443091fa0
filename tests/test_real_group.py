"""The chart's leader/worker group running for real: the test image (docker/Dockerfile target ``test``, built by
tools/test-image.sh) on the testbed's two real nodes (kubelet + containerd + runc).

What runs for real: the chart as `dsv3ctl deploy` installs it, the LeaderWorkerSet controller, the kubelet's probes,
the chart's SSH Secret, sshd in the worker, `dsv3ctl launch leader|worker|rank`, mpirun across the two pods, cluster
DNS, the Service through kube-proxy, `helm test`, the LWS group recreation, and the container's real memlock limit
(8 MiB on this machine kind). What is a double: the server each rank runs, ``tests/doubles/tritonserver_standin.py``
installed as ``tritonserver`` in the test image (it accepts exactly the contract's flags, answers Triton's
protocol with canned text and is ready once every rank checked in); no GPU, so the pods skip the ``gpus``
preflight (``launch.skip_preflight``). Each step prints its measured time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from waiting import wait_for

from dsv3ctl.adapters import realnodes

pytestmark = [pytest.mark.cluster, pytest.mark.realnodes]

ROOT = Path(__file__).resolve().parents[1]
NS = "dsv3-real"


def _t(what: str, t0: float) -> None:
    print(f"[real group] {what}: {time.monotonic() - t0:.1f} s", file=sys.stderr)




class Group:
    """One release of the chart on the real nodes, driven through the dsv3ctl CLI."""

    def __init__(self, tb: Any, host_dir: Path, release: str, spec_dir: Path) -> None:
        self.tb, self.host_dir, self.release, self.spec_dir = tb, host_dir, release, spec_dir
        self.env = {**tb.env, "DSV3CTL_HELM": str(tb.helm)}

    def spec(self, **over: Any) -> Path:
        s: dict[str, Any] = {
            "serving": {"mode": "engine"},
            "parallelism": {"nodes": 2, "gpus_per_node": 1, "tp": 2, "moe_ep": 2},
            "image": {"repository": "localhost/dsv3ctl", "tag": "test", "pull_policy": "Never"},
            "launch": {"skip_preflight": ["gpus"], "fabric_check": "off", "shm_min_gib": 0.5,
                       "engine_dir": "/models/engines", "model_repository": "/models/triton_model_repo",
                       "worker_wait_timeout_s": 120},
            "deploy": {"namespace": NS, "release": self.release, "cpu": "100m", "memory": "1Gi",
                       "ephemeral_storage": "1Gi", "shm_size": "1Gi", "rdma": {"enabled": False},
                       "tolerations": [realnodes.TOLERATION], "node_selector": dict(realnodes.NODE_SELECTOR),
                       "storage": {"kind": "hostPath", "host_path": str(self.host_dir), "artifacts_dir": ""},
                       "helm_test_image": "", "termination_grace_s": 20, "unschedulable_grace_s": 60},
        }
        for dotted, value in over.items():
            cur = s
            *path, last = dotted.split("__")
            for k in path:
                cur = cur.setdefault(k, {})
            cur[last] = value
        f = self.spec_dir / f"{self.release}-{abs(hash(json.dumps(s, sort_keys=True)))}.yaml"
        f.write_text(yaml.safe_dump(s))
        return f

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "dsv3ctl", *args], capture_output=True, text=True, env=self.env,
                           cwd=ROOT, timeout=timeout)
        print(r.stdout[-3000:], r.stderr[-3000:], sep="\n", file=sys.stderr)
        return r

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.tb.kubectl), "-n", NS, *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def pods(self) -> dict[str, dict[str, Any]]:
        r = self.kubectl("get", "pods", "-l", f"app.kubernetes.io/instance={self.release}", "-o", "json")
        out = {}
        for p in json.loads(r.stdout)["items"]:
            comp = p["metadata"]["labels"].get("app.kubernetes.io/component")
            if comp not in ("leader", "worker") or p["metadata"].get("deletionTimestamp"):
                continue
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            out[p["metadata"]["name"]] = {"uid": p["metadata"]["uid"], "ready": ready,
                                          "node": p["spec"].get("nodeName")}
        return out

    def ssh_key(self) -> str:
        r = self.kubectl("get", "secret", f"{self.release}-dsv3-ssh", "-o", "jsonpath={.data.ssh-privatekey}")
        assert r.returncode == 0 and r.stdout, r.stderr
        return r.stdout

    def service_ip(self) -> str:
        r = self.kubectl("get", "svc", f"{self.release}-dsv3-api", "-o", "jsonpath={.spec.clusterIP}")
        assert r.returncode == 0 and r.stdout, r.stderr
        return r.stdout

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(self.tb.helm), *args, "-n", NS], capture_output=True, text=True, env=self.env,
                           timeout=timeout)
        print(r.stdout[-2000:], r.stderr[-2000:], sep="\n", file=sys.stderr)
        return r

    def wait_recreated(self, old: dict[str, dict[str, Any]], timeout: float = 180) -> dict[str, dict[str, Any]]:
        def done() -> dict[str, dict[str, Any]] | None:
            now = self.pods()
            fresh = (len(now) == 2 and all(p["ready"] for p in now.values())
                     and not {p["uid"] for p in now.values()} & {p["uid"] for p in old.values()})
            return now if fresh else None

        return wait_for(f"group {self.release} recreated with new pods, both Ready", done, timeout)


@pytest.fixture(scope="module")
def group(testbed, tmp_path_factory):
    if not testbed.real_nodes:
        pytest.fail("the session testbed has no real nodes although a realnodes test was collected")
    t0 = time.monotonic()
    r = subprocess.run([str(ROOT / "tools" / "test-image.sh")], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        pytest.fail(f"tools/test-image.sh failed ({r.returncode}):\n{r.stderr[-4000:]}")
    archive = Path(r.stdout.strip().splitlines()[-1])
    _t("test image (tools/test-image.sh)", t0)
    t0 = time.monotonic()
    assert "localhost/dsv3ctl:test" in testbed.load_image(archive)
    _t("image imported into the real nodes' containerd", t0)
    # the shared volume: what the launcher checks before mpirun (the engine's world, the repository's engine path)
    host = tmp_path_factory.mktemp("models")
    os.chmod(host, 0o755)
    (host / "engines").mkdir()
    (host / "engines" / "config.json").write_text(json.dumps(
        {"version": "0.17.0", "pretrained_config": {"mapping": {"world_size": 2, "tp_size": 2, "pp_size": 1}},
         "build_config": {}}))
    (host / "triton_model_repo" / "tensorrt_llm").mkdir(parents=True)
    (host / "triton_model_repo" / "tensorrt_llm" / "config.pbtxt").write_text(
        'name: "tensorrt_llm"\nparameters: {\n  key: "gpt_model_path"\n  value: {\n    string_value: '
        '"/models/engines"\n  }\n}\n')
    g = Group(testbed, host, "rg", tmp_path_factory.mktemp("specs"))
    yield g
    g.cli("undeploy", "--spec", str(g.spec()), "--timeout", "120")
    subprocess.run([str(testbed.kubectl), "delete", "namespace", NS, "--wait=false"], env=g.env,
                   capture_output=True, timeout=60)


def test_1_deploy_wait_reports_ready_over_ssh_and_mpirun(group):
    t0 = time.monotonic()
    r = group.cli("deploy", "--spec", str(group.spec()), "--create-namespace", "--timeout", "240")
    _t("deploy --wait to Ready", t0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Ready: 1 group(s) x 2 pod(s) Ready" in r.stdout + r.stderr
    pods = group.pods()
    assert len({p["node"] for p in pods.values()}) == 2, pods  # one pod per real node
    assert all(p["node"] in group.tb.real_nodes for p in pods.values()), pods


def test_2_health_infer_and_bench_through_the_service(group):
    ip = group.service_ip()
    t0 = time.monotonic()
    r = group.cli("health", "--url", f"{ip}:8000", "--protocol", "http", "--model", "ensemble", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    h = json.loads(r.stdout)
    assert h["server"]["name"] == "triton-test-double", h  # the stand-in says what it is
    r = group.cli("infer", "--url", f"{ip}:8001", "--prompt", "hello", "--max-tokens", "8", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test double" in json.loads(r.stdout)["text"]
    r = group.cli("bench", "--url", f"{ip}:8001", "--concurrency", "2", "-n", "4", "--input-tokens", "16",
                  "--output-tokens", "8", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    _t("health + infer + bench through the Service", t0)


def test_3_logs_show_the_launcher_and_the_server_of_both_pods(group):
    spec = str(group.spec())
    r = group.cli("logs", "--spec", spec)
    assert r.returncode == 0, r.stderr
    assert "[dsv3ctl launch leader" in r.stdout and "exec: /usr/bin/mpirun" in r.stdout, r.stdout
    assert "tritonserver TEST DOUBLE rank 0: all 2 ranks checked in: ready" in r.stdout, r.stdout
    r = group.cli("logs", "worker", "1", "--spec", spec)
    assert r.returncode == 0, r.stderr
    assert "[dsv3ctl launch worker" in r.stdout, r.stdout


def test_4_helm_test_passes(group):
    t0 = time.monotonic()
    r = group.helm("test", "rg", "--timeout", "120s")
    _t("helm test", t0)
    assert r.returncode == 0 and "Phase:          Succeeded" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("role", ["worker", "leader"])
def test_5_a_lost_server_process_recreates_the_group(group, role):
    key, before = group.ssh_key(), group.pods()
    pod = "rg-dsv3-0-1" if role == "worker" else "rg-dsv3-0"
    t0 = time.monotonic()
    r = group.kubectl("exec", pod, "--", "pkill", "-f", "/usr/local/bin/tritonserver")
    assert r.returncode == 0, r.stderr
    group.wait_recreated(before)
    _t(f"{role}'s server killed -> group recreated and Ready", t0)
    assert group.ssh_key() == key
    r = group.cli("status", "--spec", str(group.spec()))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1/1 group(s) ready" in r.stdout, r.stdout
    assert "groups recreated by LeaderWorkerSet:" in r.stdout and "failed, deleted leader pod rg-dsv3-0" in r.stdout, r.stdout


def test_6_upgrade_rolls_the_group_keeps_the_ssh_key_and_rolls_back(group):
    key, before = group.ssh_key(), group.pods()
    t0 = time.monotonic()
    r = group.cli("deploy", "--spec", str(group.spec(serving__max_batch_size=8)), "--timeout", "240")
    assert r.returncode == 0, r.stdout + r.stderr
    after = group.wait_recreated(before)
    _t("upgrade (serving.max_batch_size 4 -> 8) rolled to Ready", t0)
    assert group.ssh_key() == key
    r = group.kubectl("get", "configmap", "rg-dsv3-spec", "-o", "jsonpath={.data.spec\\.yaml}")
    assert "max_batch_size: 8" in r.stdout, r.stdout
    t0 = time.monotonic()
    r = group.helm("rollback", "rg", "--wait", "--timeout", "240s")
    assert r.returncode == 0, r.stderr
    group.wait_recreated(after)
    _t("helm rollback rolled to Ready", t0)
    r = group.kubectl("get", "configmap", "rg-dsv3-spec", "-o", "jsonpath={.data.spec\\.yaml}")
    assert "max_batch_size: 4" in r.stdout, r.stdout
    assert group.ssh_key() == key


def test_7_memlock_on_a_container_limited_to_8_mib(group):
    """RLIMIT_MEMLOCK is 8 MiB in this machine kind's containers. With RDMA on, the chart grants CAP_IPC_LOCK and
    the launcher's memlock check passes; a pod told RDMA is on (DSV3CTL_RDMA) without the capability logs the fix,
    and `deploy --wait` reports that message with the crash's evidence."""
    r = group.kubectl("exec", "rg-dsv3-0", "--", "sh", "-c", "ulimit -l")
    assert r.stdout.strip() == "8192", r.stdout  # KiB: the limit this test is about
    t0 = time.monotonic()
    spec = group.spec(deploy__rdma={"enabled": True, "resource": "rdma/ib", "count": 1},
                      launch__skip_preflight=["gpus", "infiniband"])
    r = group.cli("deploy", "--spec", str(spec), "--timeout", "240")
    assert r.returncode == 0, r.stdout + r.stderr
    _t("RDMA on + CAP_IPC_LOCK under an 8 MiB memlock limit: Ready", t0)
    r = group.kubectl("logs", "rg-dsv3-0")
    assert "memlock" in r.stdout and "CAP_IPC_LOCK" in r.stdout, r.stdout
    t0 = time.monotonic()
    spec = group.spec(deploy__env={"DSV3CTL_RDMA": "true"}, launch__skip_preflight=["gpus", "infiniband"],
                      deploy__max_recreations=2)
    r = group.cli("deploy", "--spec", str(spec), "--timeout", "240")
    _t("RDMA without CAP_IPC_LOCK: deploy --wait failed with the pod's message", t0)
    text = r.stdout + r.stderr
    assert r.returncode == 1, text
    assert "RLIMIT_MEMLOCK" in text or "memlock" in text, text
    assert "IPC_LOCK" in text, text
