"""Testbed adapter pieces that need no cluster: webhook rewriting, node objects, PID safety, env lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dsv3ctl.adapters import testbed as tb
from dsv3ctl.errors import RuntimeFailure, SpecError

MANIFEST = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- name: mpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
- name: mleaderworkerset.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-lws}}
  rules: [{apiGroups: [leaderworkerset.x-k8s.io], apiVersions: [v1], operations: [CREATE], resources: [leaderworkersets]}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: validating-webhook-configuration}
webhooks:
- name: vpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /validate--v1-pod}}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [pods]}]
"""


def test_webhooks_point_at_loopback_with_ca_and_pod_selector(tmp_path):
    (tmp_path / "lws" / "webhook").mkdir(parents=True)
    (tmp_path / "lws" / "webhook" / "manifests.yaml").write_text(MANIFEST)
    cfgs = tb._webhook_configs(tmp_path, 9555, "Q0E=")
    assert [c["kind"] for c in cfgs] == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    whs = {w["name"]: w for c in cfgs for w in c["webhooks"]}
    assert whs["mpod.kb.io"]["clientConfig"] == {"url": "https://127.0.0.1:9555/mutate--v1-pod", "caBundle": "Q0E="}
    assert whs["vpod.kb.io"]["objectSelector"]["matchExpressions"] == [
        {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]
    assert "objectSelector" not in whs["mleaderworkerset.kb.io"]
    assert whs["mleaderworkerset.kb.io"]["clientConfig"]["url"] == "https://127.0.0.1:9555/mutate-lws"


def test_node_manifest_is_a_kwok_gpu_node():
    n = tb.node_manifest(1)
    assert n["metadata"]["name"] == "kwok-gpu-1"
    assert n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    labels = n["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "kwok-gpu-1" and labels["type"] == "kwok"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3" and labels["nvidia.com/gpu.count"] == "8"
    for key in ("capacity", "allocatable"):
        assert n["status"][key]["nvidia.com/gpu"] == "8"
        assert int(n["status"][key]["rdma/ib"]) >= 1


def test_stop_pid_only_signals_the_recorded_binary():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert tb._stop_pid(proc.pid, "/not/the/binary") is False
        assert proc.poll() is None
        assert tb._stop_pid(proc.pid, sys.executable, grace_s=5) is True
        assert not tb._proc_alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_env_exports_put_tools_first(tmp_path):
    lines = tb.env_exports(run_dir=tmp_path, bin_dir=tmp_path / "bin").splitlines()
    assert lines == [f'export PATH={tmp_path / "bin"}:"$PATH"', f"export KUBECONFIG={tmp_path / 'kubeconfig'}"]


def test_missing_tools_name_make_tools(tmp_path):
    (tmp_path / "bin").mkdir()
    with pytest.raises(RuntimeFailure) as e:
        tb._check_tools(tmp_path / "bin")
    assert "kube-apiserver" in e.value.message and "make tools" in (e.value.hint or "")


def test_bad_node_count_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError):
        tb.up(nodes=0, run_dir=tmp_path, bin_dir=tmp_path)


def test_status_of_nothing_is_not_healthy(tmp_path):
    s = tb.status(tmp_path)
    assert s["healthy"] is False
    assert all(not v["ok"] for v in s["components"].values())


def test_pki_serves_loopback_and_admin_is_cluster_admin(tmp_path):
    from cryptography import x509

    tb._make_pki(tmp_path)
    api = x509.load_pem_x509_certificate((tmp_path / "apiserver.crt").read_bytes())
    sans = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(i) for i in sans.get_values_for_type(x509.IPAddress)}
    admin = x509.load_pem_x509_certificate((tmp_path / "admin.crt").read_bytes())
    assert "O=system:masters" in admin.subject.rfc4514_string()
    hook = x509.load_pem_x509_certificate((tmp_path / "webhook" / "tls.crt").read_bytes())
    assert hook.issuer == api.issuer


def test_release_stops_only_a_pytest_cluster_that_no_other_session_uses(tmp_path, monkeypatch):
    monkeypatch.delenv("DSV3CTL_TESTBED_KEEP", raising=False)
    stopped = []
    monkeypatch.setattr(tb, "_stop_all", lambda run_dir: stopped.append(run_dir) or [])
    (tmp_path / "users").mkdir()
    handle = tb.Testbed(tmp_path, tmp_path / "bin")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tb._write_state(tmp_path, {"owner": "manual"})
        assert tb.release(handle) is False and not stopped  # make testbed-up's cluster: never stopped by tests
        tb._write_state(tmp_path, {"owner": "pytest"})
        (tmp_path / "users" / str(other.pid)).write_text("reused\n")
        (tmp_path / "users" / str(tb.os.getpid())).write_text("started\n")
        assert tb.release(handle) is False and not stopped  # another live session still uses it
        assert not (tmp_path / "users" / str(tb.os.getpid())).exists()
    finally:
        other.kill()
        other.wait()
    assert tb.release(handle) is True and stopped == [tmp_path]  # the last user stops it


def test_status_line_says_not_running_instead_of_none(tmp_path, capsys):
    assert tb.main(["--run-dir", str(tmp_path), "status"]) == 1
    out = capsys.readouterr().out
    assert "None" not in out
    assert out.strip().splitlines()[-1].startswith("testbed not running") and "make testbed-up" in out
    comps = {c: {"ok": c != "kube-apiserver", "detail": ""} for c in tb.COMPONENTS}
    line = tb.status_line({"components": comps, "nodes_ready": None, "run_dir": str(tmp_path)})
    assert line.startswith("nodes: unknown (kube-apiserver is down)")
    comps = {c: {"ok": True, "detail": ""} for c in tb.COMPONENTS}
    assert tb.status_line({"components": comps, "nodes_ready": 2, "nodes": 2, "run_dir": "", "kubeconfig": "k"}) == \
        "nodes Ready: 2 of 2  kubeconfig: k"
