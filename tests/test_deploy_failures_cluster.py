"""How `deploy --wait` ends on the local cluster when the group cannot become Ready: a crash loop that the real
LWS controller turns into group recreations, and an unschedulable pod judged by the cluster autoscaler's events.

The testbed's GPU nodes are kwok nodes (no kubelet: pods never run containers), so what a kubelet would report
is written into the pod status through the API server: a worker's container status with ``restartCount: 1`` and
``lastState.terminated`` (exit code, reason). The LWS controller (v0.9.0) reacts to that as to a real restart:
``pkg/utils/pod/pod_utils.go:29-45`` (``ContainerRestarted``: restartCount > 0 in a Running/Pending pod) and
``pkg/controllers/pod_controller.go:204-266`` (``handleRestartPolicy``: deletes the leader, the group comes back
under the same names with new UIDs). The specs have 3 pods per group on the 2-node testbed, so one pod stays
Pending and the group can never become Ready before the failure is judged."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

NS = "dsv3-fail"
ROOT = Path(__file__).resolve().parents[1]
THREE = {"parallelism": {"nodes": 3, "tp": 8, "pp": 3}, "serving": {"mode": "llmapi"}}


@pytest.fixture
def kenv(testbed):
    """The testbed, a CoreV1Api for it, the env for `python -m dsv3ctl`; releases left in NS are uninstalled
    afterwards so the fake GPUs are free for the tests that follow."""
    from kubernetes import client

    env = {**os.environ, **testbed.env, "DSV3CTL_HELM": str(testbed.helm), "PYTHONUNBUFFERED": "1",
           "COLUMNS": "200"}
    core = client.CoreV1Api(testbed.api_client())
    _no_pods_left(core)
    yield testbed, core, env
    helm = str(testbed.helm)
    for rel in subprocess.run([helm, "list", "-n", NS, "-q"], capture_output=True, text=True, check=False,
                              env=testbed.env, timeout=60).stdout.split():
        subprocess.run([helm, "uninstall", rel, "-n", NS, "--wait", "--timeout", "120s"], capture_output=True,
                       check=False, env=testbed.env, timeout=180)
    subprocess.run([str(testbed.kubectl), "-n", NS, "delete", "pod", "--all", "--wait=true", "--timeout=60s"],
                   capture_output=True, check=False, env=testbed.env, timeout=90)


def _no_pods_left(core, limit_s: float = 90) -> None:
    """Wait until no pod is left in NS (an earlier release's pods may still hold the fake GPUs)."""
    end = time.monotonic() + limit_s
    left: list[str] = []
    while time.monotonic() < end:
        left = [p.metadata.name for p in core.list_namespaced_pod(NS).items] if _ns_exists(core) else []
        if not left:
            return
        time.sleep(0.5)
    pytest.fail(f"pods of an earlier test still in {NS} after {limit_s:.0f} s: {left}")


def _ns_exists(core) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        core.read_namespace(NS)
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


class Deploy:
    """`python -m dsv3ctl deploy ...` in the background; its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "dsv3ctl", "deploy", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, limit_s: float) -> tuple[int, float]:
        try:
            self.proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.reader.join(5)
            pytest.fail(f"deploy still running after {limit_s:.0f} s:\n{self.text}")
        self.reader.join(5)
        return self.proc.returncode, time.monotonic() - self.t0


def _pod(core, name: str):
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_pod(name, NS)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _report_restart(core, pod, exit_code: int, reason: str) -> bool:
    """Write into ``pod``'s status what a kubelet reports after container dsv3 failed once and was restarted.
    False when the pod changed meanwhile (resourceVersion conflict) or is gone."""
    from kubernetes.client.exceptions import ApiException

    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    body = core.api_client.sanitize_for_serialization(pod)
    statuses = body["status"].get("containerStatuses") or []
    for cs in statuses:
        if cs["name"] == "dsv3":
            cs["restartCount"] = 1
            cs["lastState"] = {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": now,
                                              "finishedAt": now, "message": "engine load failed"}}
    if not any(cs["name"] == "dsv3" for cs in statuses):
        return False
    try:
        core.replace_namespaced_pod_status(pod.metadata.name, NS, body)
        return True
    except ApiException as e:
        if e.status in (404, 409, 422):
            return False
        raise


def test_crash_loop_is_reported_with_exit_code_and_recreation_count(kenv, write_spec):
    _, core, env = kenv
    rel = "crash"
    # no unschedulable verdict here: the Pending third pod only keeps the group from becoming Ready
    p = write_spec({**THREE, "deploy": {"unschedulable_grace_s": 3600, "max_recreations": 3}})
    d = Deploy(["--spec", str(p), "-n", NS, "--release", rel, "--create-namespace", "--skip-preflight",
                "--timeout", "400"], env)
    worker = f"{rel}-dsv3-0-1"
    patched: list[str] = []
    end = time.monotonic() + 300
    while d.running() and time.monotonic() < end:
        # the next crash only once deploy has seen the group come back from the last one, and none after the
        # 3rd: deploy must end on it (a deploy that needed a 4th would run into the 300 s bound below)
        noted = d.text.count("group 0 recreated (")
        pod = _pod(core, worker) if noted == len(patched) < 3 else None
        if (pod is not None and pod.metadata.deletion_timestamp is None and pod.status.phase == "Running"
                and pod.metadata.uid not in patched and _report_restart(core, pod, 3, "Error")):
            patched.append(pod.metadata.uid)
        time.sleep(0.3)
    code, took = d.wait(60)
    text = d.text
    print(text)
    assert code == 1, text
    assert "Traceback" not in text, text
    # the verdict, not the deadline: the group was recreated 3 times, each a new UID of the same pod name
    assert "not Ready after" not in text, text
    assert "group 0 was recreated 3 time(s)" in text and "deploy.max_recreations=3" in text, text
    assert f"last failure: container dsv3 of pod {worker} exit code 3 (Error, engine load failed)" in text, text
    # kwok nodes have no kubelet: said plainly instead of log lines
    assert f"no log of container dsv3 of pod {worker}" in text and "kubelet" in text, text
    assert "group 0 recreated (1 of deploy.max_recreations=3" in text, text
    # the real LWS controller's own record of what it did (pod_controller.go:264)
    assert (f"RecreateGroup event(s), last: Worker pod {worker} failed, deleted leader pod {rel}-dsv3-0 to "
            "recreate group 0") in text, text
    assert len(patched) == 3, (patched, text)  # it stopped at the 3rd recreation: no 4th crash was needed
    assert took < 300, f"took {took:.0f} s (load timeout {3600} s)\n{text}"


def _autoscaler_event(core, pod, reason: str, message: str) -> None:
    from kubernetes import client

    now = datetime.now(UTC)
    core.create_namespaced_event(NS, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{pod.metadata.name}."),
        involved_object=client.V1ObjectReference(kind="Pod", namespace=NS, name=pod.metadata.name,
                                                 uid=pod.metadata.uid, api_version="v1"),
        reason=reason, message=message, type="Normal", count=1, first_timestamp=now, last_timestamp=now,
        source=client.V1EventSource(component="cluster-autoscaler")))


def test_unschedulable_waits_while_the_autoscaler_adds_nodes_then_says_why_not(kenv, write_spec):
    _, core, env = kenv
    rel = "scale"
    grace = 6
    p = write_spec({**THREE, "deploy": {"unschedulable_grace_s": 3600}})
    d = Deploy(["--spec", str(p), "-n", NS, "--release", rel, "--create-namespace", "--skip-preflight",
                "--timeout", "120", "--grace", str(grace)], env)  # --grace overrides the spec's 3600
    end = time.monotonic() + 90
    pending: dict[str, object] = {}  # the release's pods the scheduler cannot place (one, with both nodes free)
    while time.monotonic() < end and d.running() and not pending:
        pending = {q.metadata.name: q for q in core.list_namespaced_pod(NS, label_selector=f"app.kubernetes.io/instance={rel}").items
                   if any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in (q.status.conditions or []))}
        time.sleep(0.2)
    assert pending, d.text
    since = time.monotonic()
    for pod in pending.values():
        _autoscaler_event(core, pod, "TriggeredScaleUp", "pod triggered scale-up: [{gpu-pool 2->3 (max: 4)}]")
    while time.monotonic() < end and d.running() and "adding nodes" not in d.text:
        time.sleep(0.2)
    assert "a cluster autoscaler is adding nodes for it (TriggeredScaleUp: pod triggered scale-up" in d.text, d.text
    # past the grace, still waiting: nodes are being added
    while time.monotonic() < since + grace + 4 and d.running():
        time.sleep(0.2)
    assert d.running(), d.text
    time.sleep(1.1)  # core/v1 event timestamps have second resolution: the next one must be newer
    for pod in pending.values():
        _autoscaler_event(core, pod, "NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group size reached")
    code, took = d.wait(60)
    text = d.text
    assert code == 1, text
    assert "not Ready after" not in text, text
    assert any(f"pod {name} unschedulable for" in text for name in pending) and "Unschedulable" in text, text
    assert ("the cluster autoscaler is not adding nodes for it (NotTriggerScaleUp: pod didn't trigger scale-up: "
            "1 max node group size reached)") in text, text
    assert took < 100, text
