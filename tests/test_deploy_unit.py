"""`render | deploy | status | logs | undeploy` pieces that need no cluster: an API server that does not
answer gives one clean error (exit 1) naming the server, `logs -f` means --follow, kubelet errors of `logs`
are parsed, free-GPU arithmetic of the preflight, and refusals point at `plan --spec` of the same file."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace as NS

import pytest

from dsv3ctl.adapters import kube as k


@pytest.fixture
def dead_api(tmp_path, monkeypatch):
    """A kubeconfig whose server is a loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    kc = tmp_path / "kubeconfig"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kc))
    monkeypatch.setenv("DSV3CTL_HELM", "/nonexistent/helm")  # undeploy must fail on the API, not on helm
    return url


@pytest.mark.parametrize("args", [("status",), ("status", "-o", "json"), ("logs",), ("logs", "leader", "-f"),
                                  ("logs", "worker", "1", "--follow"), ("undeploy",), ("deploy", "--dry-run")])
def test_api_down_is_one_clean_runtime_failure(run_cli, dead_api, args):
    r = run_cli(*args)
    assert r.code == 1, r.out + r.err
    text = r.out + r.err
    assert "Traceback" not in text and "MaxRetryError" not in text and "urllib3" not in text
    assert f"the Kubernetes API server {dead_api}" in text and "does not answer: Connection refused" in text
    assert "make testbed-up" in text and "KUBECONFIG" in text


def test_logs_f_is_follow_and_spec_keeps_its_long_form(run_cli):
    import typer.main

    from dsv3ctl.cli import app

    cmds = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    opts = {p.name: p.opts for p in cmds["logs"].params}
    assert opts["follow"] == ["--follow", "-f"] and opts["spec"] == ["--spec"]
    for other in ("deploy", "status", "undeploy", "render"):  # the shared SpecOpt keeps -f elsewhere
        assert {p.name: p.opts for p in cmds[other].params}["spec"] == ["--spec", "-f"]


def test_render_refusal_points_at_plan_of_the_same_spec(run_cli, write_spec, tmp_path):
    p = write_spec({"parallelism": {"nodes": 3, "gpus_per_node": 4, "tp": 12}}, "tp12.yaml")
    r = run_cli("render", "--spec", p, "--out", tmp_path / "out")
    assert r.code == 2
    assert f"`dsv3ctl plan --spec {p}` shows every check" in r.err


KWOK_BODY = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message":
                        'Get "https://kwok-gpu-0:10250/containerLogs/dsv3/dsv3-0/dsv3": dial tcp: lookup kwok-gpu-0 '
                        "on 127.0.0.53:53: no such host"})


class _Core:
    def __init__(self, annotations):
        self.annotations = annotations

    def read_node(self, name):
        return NS(metadata=NS(annotations=self.annotations))


def _pod(ns="dsv3", name="dsv3-0", node="kwok-gpu-0"):
    return NS(metadata=NS(namespace=ns, name=name), spec=NS(node_name=node))


def test_logs_error_on_a_kwok_node_is_a_sentence_not_json():
    from kubernetes.client.exceptions import ApiException

    from dsv3ctl.adapters.kube import log_error

    e = ApiException(status=500, reason="Internal Server Error")
    e.body = KWOK_BODY
    err = log_error(NS(core=_Core({"kwok.x-k8s.io/node": "fake"})), _pod(), e)
    assert "{" not in err.message and "kwok fake node" in err.message and "kwok-gpu-0" in err.message
    assert "runs no containers" in err.message
    err = log_error(NS(core=_Core({})), _pod(), e)  # a real node whose kubelet is unreachable
    assert "{" not in err.message and "kubelet of its node kwok-gpu-0" in err.message and "no such host" in err.message
    assert "10250" in (err.hint or "")
    e = ApiException(status=400, reason="Bad Request")
    e.body = json.dumps({"kind": "Status", "message": 'container "dsv3" in pod "dsv3-0" is waiting to start'})
    err = log_error(NS(core=_Core({})), _pod(), e)
    assert err.message == 'cannot read the log of pod dsv3/dsv3-0: container "dsv3" in pod "dsv3-0" is waiting to start'


def _gpu_pod(ns, name, node, gpus, release=None, init=0):
    res = lambda n: NS(resources=NS(requests={"nvidia.com/gpu": str(n)} if n else {}, limits=None))  # noqa: E731
    return NS(metadata=NS(namespace=ns, name=name, labels={"app.kubernetes.io/instance": release} if release else {}),
              spec=NS(node_name=node, containers=[res(gpus)], init_containers=[res(init)] if init else None))


def test_gpu_holders_count_bound_pods_but_not_the_release_itself():
    pods = [_gpu_pod("dsv3", "dsv3-0", "n0", 8, "dsv3"), _gpu_pod("other", "job", "n1", 2, init=4),
            _gpu_pod("dsv3", "mine-0", "n1", 8, "mine"), _gpu_pod("x", "cpu", "n1", 0),
            _gpu_pod("x", "elsewhere", "n9", 8)]
    core = NS(list_pod_for_all_namespaces=lambda field_selector: NS(items=pods))
    held, why = k.gpu_holders(NS(core=core), {"n0", "n1"}, skip=("dsv3", "mine"))
    assert why == ""
    assert {n: [str(h) for h in hs] for n, hs in held.items()} == {
        "n0": ["dsv3/dsv3-0 (8, release dsv3)"], "n1": ["other/job (4)"]}


def test_helm_is_found_in_the_pinned_tools_when_not_on_path(tmp_path, monkeypatch, capsys):
    from dsv3ctl.adapters import helm
    from dsv3ctl.errors import RuntimeFailure

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "helm"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    monkeypatch.delenv("DSV3CTL_HELM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("DSV3CTL_TOOLS_BIN", str(bin_dir))
    assert helm.find_helm() == str(exe)
    assert f"using the pinned {exe}" in capsys.readouterr().err
    monkeypatch.setenv("DSV3CTL_TOOLS_BIN", str(tmp_path / "none"))
    with pytest.raises(RuntimeFailure, match="no pinned helm") as e:
        helm.find_helm()
    assert "make tools" in (e.value.hint or "") and "Helm 3.x or 4.x" in (e.value.hint or "")


def test_status_table_keeps_long_pod_names_when_piped(run_cli, monkeypatch):
    from dsv3ctl.cli import deploy as d

    long = "a-very-long-release-name-dsv3-0-1"
    pod = {"name": long, "group": 0, "role": "worker", "worker_index": 1, "phase": "Running", "ready": True,
           "restarts": 0, "node": "gpu-node-with-a-long-name-17", "reason": "", "terminating": False}
    st = {"release": "r", "namespace": "ns", "lws": "r-dsv3", "exists": True, "size": 2, "replicas": 1,
          "ready_replicas": 1, "updated_replicas": 1, "conditions": {"Available": "True"}, "generation": 1,
          "observed_generation": 1, "ready": True, "groups": [{"index": 0, "ready": True, "pods": [pod]}],
          "endpoints": {"service": "r-dsv3-api", "ports": {"http": 8000, "grpc": 8001},
                        "urls": {"http": "http://r-dsv3-api.ns.svc:8000", "grpc": "r-dsv3-api.ns.svc:8001"}}}
    monkeypatch.setattr(d, "_kube", lambda kc: NS(deadline=None))
    monkeypatch.setattr(k, "status", lambda kube, ns, rel, fabric=False: st)
    monkeypatch.setenv("COLUMNS", "60")
    r = run_cli("status", "-n", "ns", "--release", "r")
    assert r.code == 0, r.err
    assert long in r.out and "gpu-node-with-a-long-name-17" in r.out and "…" not in r.out, r.out
    assert "kubectl -n ns port-forward svc/r-dsv3-api 8000:8000 8001:8001" in r.out


def test_pod_security_level_follows_the_baseline_rules():
    from dsv3ctl.core.deploy_rules import pod_security_level

    base = {"rdma": False, "storage_kind": "newClaim", "host_network": False, "host_ipc": False, "extra_volumes": []}
    assert pod_security_level(**base) == ("baseline", [])
    for change, needle in [({"rdma": True}, "IPC_LOCK"), ({"storage_kind": "hostPath"}, "hostPath"),
                           ({"host_network": True}, "hostNetwork"), ({"host_ipc": True}, "hostIPC"),
                           ({"extra_volumes": [{"name": "x", "hostPath": {"path": "/x"}}]}, "extra_volumes")]:
        level, why = pod_security_level(**{**base, **change})
        assert level == "privileged" and len(why) == 1 and needle in why[0], (change, why)
