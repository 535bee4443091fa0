"""Every command that waits returns within its deadline (+10 s) against an API server that never answers
(accepts the connection, then silence) and, on the local testbed, a path that stops forwarding mid-wait;
its message names what it waited for. Watches that keep answering 410 Gone are re-listed with backoff.
All traffic stays on 127.0.0.1; every subprocess is bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
from netfault import StallProxy, kubeconfig_via

from dsv3ctl.adapters import kube as k

ROOT = Path(__file__).resolve().parents[1]
SLACK_S = 10.0


def _cli(args: list[str], env: dict[str, str], limit_s: float,
         on_line: tuple[str, threading.Event] | None = None) -> tuple[int, str, float]:
    """Run ``python -m dsv3ctl ARGS``; returns (exit code, stdout+stderr, seconds). Killed after limit_s.
    ``on_line=(text, event)`` sets the event when a stdout line containing text appears."""
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "dsv3ctl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}, cwd=ROOT)
    out: list[str] = []
    err: list[str] = []

    def read(stream, into: list[str], watch: bool) -> None:
        for line in stream:
            into.append(line)
            if watch and on_line and on_line[0] in line:
                on_line[1].set()

    readers = [threading.Thread(target=read, args=(p.stdout, out, True), daemon=True),
               threading.Thread(target=read, args=(p.stderr, err, False), daemon=True)]
    for r in readers:
        r.start()
    try:
        p.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        for r in readers:
            r.join(5)
        pytest.fail(f"`dsv3ctl {' '.join(args)}` still running after {limit_s:.0f} s:\n{''.join(out + err)}")
    took = time.monotonic() - t0
    for r in readers:
        r.join(5)
    return p.returncode, "".join(out + err), took


@pytest.fixture
def silent(tmp_path):
    srv = StallProxy(None)
    kc = kubeconfig_via(None, srv.url, tmp_path / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kc), "DSV3CTL_HELM": "/nonexistent/helm"}
    yield NS(server=srv, env=env)
    srv.close()


@pytest.mark.parametrize(("args", "deadline", "waited_for"), [
    (["status", "--timeout", "6"], 6, "the status of release dsv3 in namespace dsv3"),
    (["status", "-o", "json", "--timeout", "6"], 6, "the status of release dsv3"),
    (["deploy", "--timeout", "8"], 8, "the preflight reads of release dsv3 in namespace dsv3"),
    (["logs", "-f", "--timeout", "6"], 6, "the leader pod of group 0 of release dsv3 in namespace dsv3"),
    (["undeploy", "--timeout", "6"], 6, "every object of release dsv3 in namespace dsv3 to be deleted"),
])
def test_silent_server_every_wait_ends_within_its_deadline(silent, args, deadline, waited_for):
    code, text, took = _cli(args, silent.env, deadline + SLACK_S + 20)
    assert code == 1, text
    assert took <= deadline + SLACK_S, f"took {took:.1f} s (deadline {deadline} s)\n{text}"
    assert f"the Kubernetes API server {silent.server.url}" in text and "does not answer: timed out" in text, text
    assert waited_for in text, text
    assert "Traceback" not in text and "urllib3" not in text
    assert silent.server.connections >= 1  # it was asked, not refused


def test_request_timeouts_are_cut_to_the_deadline(silent):
    kube = k.Kube(silent.env["KUBECONFIG"])  # explicit: the client reads $KUBECONFIG once, at its import
    assert kube.request_timeout() == (k.CONNECT_TIMEOUT_S, k.READ_TIMEOUT_S)
    kube.deadline = k.Deadline(2.5, "x")
    c, r = kube.request_timeout()
    assert 2.0 < c <= 2.5 and 2.0 < r <= 2.5
    assert kube.api.configuration.retries == 0  # urllib3 would otherwise try every request 4 times
    kube.deadline = k.Deadline(0, "the thing")
    with pytest.raises(k.RuntimeFailure, match="gave up after 0 s waiting for the thing; last state seen: none yet"):
        kube.ping()


class _Gone:
    """``kube.core`` stand-in (not an HTTP server): lists answer, every watch ends in 410 Gone."""

    def __init__(self):
        self.lists = 0

    def list_namespaced_pod(self, namespace, **kw):
        from kubernetes.client.exceptions import ApiException

        if kw.get("watch"):
            raise ApiException(status=410, reason="Expired: too old resource version")
        self.lists += 1
        return NS(metadata=NS(resource_version="1"), items=[])


def test_410_gone_is_re_listed_with_capped_backoff(monkeypatch):
    core = _Gone()
    kube = NS(core=core, deadline=None, request_timeout=lambda read=k.READ_TIMEOUT_S: (1.0, read))
    absent = {"exists": False, "lws": "dsv3", "groups": [], "ready": False, "replicas": 0, "size": 0,
              "updated_replicas": 0, "ready_replicas": 0}
    monkeypatch.setattr(k, "status", lambda *a, **kw: absent)
    t0 = time.monotonic()
    res = k.wait_ready(kube, "ns", "rel", timeout_s=4)  # type: ignore[arg-type]
    took = time.monotonic() - t0
    assert not res.ok and "waited for release rel in namespace ns to become Ready" in res.message
    assert "no LeaderWorkerSet dsv3 yet" in res.message  # the last state seen
    assert 3.5 <= took <= 6
    # 0.25 s doubling, >= half of each step: at most ~6 re-lists in 4 s (without backoff: thousands)
    assert 2 <= core.lists <= 8, core.lists


def test_backoff_is_exponential_capped_and_jittered():
    b = k.Backoff(base=0.5, cap=4.0)
    ds = [b.next() for _ in range(8)]
    for i, d in enumerate(ds):
        step = min(4.0, 0.5 * 2 ** i)
        assert step / 2 <= d <= step
    assert len({round(d, 6) for d in ds}) > 1
    b.reset()
    assert b.next() <= 0.5


# ------------------------------------------------------------------ on the local cluster, through a stalling path

STALL_NS = "dsv3-stall"


@pytest.fixture
def stall(testbed, tmp_path):
    """A :class:`StallProxy` to the testbed's API server, a kubeconfig through it, and a direct env; every
    release left in STALL_NS is uninstalled afterwards (directly, not through the proxy)."""
    import subprocess as sp
    from urllib.parse import urlsplit

    import yaml

    server = yaml.safe_load(testbed.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    u = urlsplit(server)
    proxy = StallProxy((u.hostname or "127.0.0.1", int(u.port or 443)))
    kc = kubeconfig_via(testbed.kubeconfig, proxy.url, tmp_path / "kubeconfig-proxy")
    direct = {**os.environ, **testbed.env, "DSV3CTL_HELM": str(testbed.helm)}
    yield NS(proxy=proxy, env={**direct, "KUBECONFIG": str(kc)}, direct=direct, testbed=testbed)
    proxy.close()
    helm = str(testbed.helm)
    for rel in sp.run([helm, "list", "-n", STALL_NS, "-q"], capture_output=True, text=True, check=False,
                      env=direct, timeout=60).stdout.split():
        sp.run([helm, "uninstall", rel, "-n", STALL_NS, "--wait", "--timeout", "120s"], capture_output=True,
               check=False, env=direct, timeout=180)
    sp.run([str(testbed.kubectl), "-n", STALL_NS, "delete", "pod", "--all", "--wait=true", "--timeout=60s"],
           capture_output=True, check=False, env=direct, timeout=90)


@pytest.mark.cluster
def test_deploy_wait_ends_at_its_deadline_when_the_path_stalls_mid_watch(stall, write_spec):
    # 3 nodes on the 2-node testbed: the third pod stays Pending, so deploy is still watching when the path stalls
    p = write_spec({"parallelism": {"nodes": 3, "tp": 8, "pp": 3}, "serving": {"mode": "llmapi"}})
    seen = threading.Event()
    watcher = threading.Thread(target=lambda: seen.wait(120) and stall.proxy.stall(), daemon=True)
    watcher.start()
    deadline = 30
    code, text, took = _cli(["deploy", "--spec", str(p), "-n", STALL_NS, "--release", "stall", "--create-namespace",
                             "--skip-preflight", "--timeout", str(deadline), "--grace", "600"],
                            stall.env, deadline + SLACK_S + 30, on_line=("group 0", seen))
    assert seen.is_set() and stall.proxy.stalled.is_set(), text  # it was watching when the path stalled
    assert code == 1, text
    assert took <= deadline + SLACK_S, f"took {took:.1f} s (deadline {deadline} s)\n{text}"
    assert f"waited for release stall in namespace {STALL_NS} to become Ready" in text, text
    assert "last state seen: 0/1 group(s) ready" in text and "stall-dsv3-0" in text, text
    assert "Traceback" not in text


@pytest.mark.cluster
@pytest.mark.parametrize(("args", "deadline", "waited_for"), [
    (["status", "--timeout", "8"], 8, f"the status of release dsv3 in namespace {STALL_NS}"),
    (["logs", "-f", "--timeout", "8"], 8, f"the leader pod of group 0 of release dsv3 in namespace {STALL_NS}"),
    (["undeploy", "--timeout", "8"], 8, f"every object of release dsv3 in namespace {STALL_NS} to be deleted"),
])
def test_commands_end_at_their_deadline_when_the_path_is_stalled(stall, args, deadline, waited_for):
    # first through the working path (the proxy forwards), then stalled: the same command ends in time
    code, text, _ = _cli([*args, "-n", STALL_NS], stall.env, 120)
    assert "does not answer" not in text, text
    stall.proxy.stall()
    code, text, took = _cli([*args, "-n", STALL_NS], stall.env, deadline + SLACK_S + 30)
    assert code == 1, text
    assert took <= deadline + SLACK_S, f"took {took:.1f} s (deadline {deadline} s)\n{text}"
    assert "does not answer: timed out" in text and waited_for in text, text


@pytest.mark.cluster
def test_undeploy_ends_at_its_deadline_when_the_path_stalls_during_helm(stall):
    code, text, _ = _cli(["deploy", "-n", STALL_NS, "--release", "gone", "--create-namespace", "--no-wait"],
                         stall.direct, 180)
    assert code == 0, text
    seen = threading.Event()
    threading.Thread(target=lambda: seen.wait(120) and stall.proxy.stall(), daemon=True).start()
    deadline = 15
    code, text, took = _cli(["undeploy", "-n", STALL_NS, "--release", "gone", "--timeout", str(deadline)],
                            stall.env, deadline + SLACK_S + 30, on_line=("helm uninstall", seen))
    assert seen.is_set(), text
    assert code == 1, text
    assert took <= deadline + SLACK_S, f"took {took:.1f} s (deadline {deadline} s)\n{text}"
    assert f"every object of release gone in namespace {STALL_NS} to be deleted" in text, text
