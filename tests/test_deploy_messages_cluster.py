"""What `deploy` says before it changes anything, on the local cluster: a GPU product label that no node
carries is named as the cause (not "use fewer nodes"), and a dry run says it would replace a running release
whose group size differs; the Pod Security level the pods need is what the real PodSecurity admission
plugin decides, and a namespace dsv3ctl creates carries it."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.cluster

NS = "dsv3-msg"


@pytest.fixture
def kenv(testbed, monkeypatch):
    for k, v in testbed.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DSV3CTL_HELM", str(testbed.helm))
    yield testbed
    helm = str(testbed.helm)
    for rel in subprocess.run([helm, "list", "-n", NS, "-q"], capture_output=True, text=True, check=False,
                              env=testbed.env, timeout=60).stdout.split():
        subprocess.run([helm, "uninstall", rel, "-n", NS, "--wait", "--timeout", "120s"], capture_output=True,
                       check=False, env=testbed.env, timeout=180)
    subprocess.run([str(testbed.kubectl), "-n", NS, "delete", "pod", "--all", "--wait=true", "--timeout=60s"],
                   capture_output=True, check=False, env=testbed.env, timeout=90)


def test_a_gpu_label_no_node_carries_is_named_as_the_cause(kenv, run_cli, write_spec):
    p = write_spec({"hardware": {"gpu": "H200"}, "parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}})
    r = run_cli("deploy", "--spec", p, "-n", NS, "--release", "lbl", "--create-namespace", "--dry-run")
    text = r.out + r.err
    assert r.code == 2, text
    assert "The GPU product label is the cause" in text and "nvidia.com/gpu.product=NVIDIA-H200" in text, text
    assert "deploy.gpu_product_label" in text and "parallelism.nodes <= 0" not in text, text
    assert text.count("Set hardware.gpu to the nodes' GPU") == 1, text  # said once, not in the error again


def test_dry_run_says_it_replaces_a_running_release_of_another_size(kenv, run_cli, write_spec):
    r = run_cli("deploy", "-n", NS, "--release", "size", "--create-namespace", "--no-wait")
    assert r.code == 0, r.out + r.err
    p = write_spec({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}})
    r = run_cli("deploy", "--spec", p, "-n", NS, "--release", "size", "--dry-run", "--skip-preflight")
    assert r.code == 0, r.out + r.err
    assert "release size runs 1 group(s) of 2 pod(s); this spec has 1 of 1" in r.out, r.out
    assert "replacing the running 1 x 2 group(s)" in r.out, r.out
    r = run_cli("deploy", "-n", NS, "--release", "size", "--dry-run")  # same size: no such note
    assert r.code == 0 and "replaces every running group" not in r.out, r.out


def _kubectl(testbed, *args, stdin=None):
    return subprocess.run([str(testbed.kubectl), *args], input=stdin, capture_output=True, text=True,
                          env=testbed.env, timeout=60)


def _leader_pod(run_cli, spec_path, out) -> str:
    import yaml

    r = run_cli("render", "--spec", spec_path, "--out", out)
    assert r.code == 0, r.err
    lws = next(yaml.safe_load(f.read_text()) for f in sorted(out.glob("*-leaderworkerset-*.yaml")))
    tpl = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-probe"}, "spec": tpl["spec"]})


@pytest.mark.parametrize("level", ["baseline"])
def test_pod_security_level_matches_the_real_admission_plugin(kenv, run_cli, write_spec, tmp_path, level):
    """The level `plan` states is what kube-apiserver's PodSecurity admission decides: in a namespace that
    enforces baseline, the default group's leader pod (IPC_LOCK for RDMA, hostPath storage) is refused by a
    server-side dry run and by deploy's preflight (exit 2, with the kubectl label fix); a one-node group on a
    claim (no RDMA, no hostPath) is admitted and passes the preflight."""
    ns = "dsv3-psa"
    _kubectl(kenv, "create", "namespace", ns)
    assert _kubectl(kenv, "label", "namespace", ns, f"pod-security.kubernetes.io/enforce={level}",
                    "--overwrite").returncode == 0
    try:
        default = write_spec({})
        r = _kubectl(kenv, "create", "--dry-run=server", "-n", ns, "-f", "-",
                     stdin=_leader_pod(run_cli, default, tmp_path / "a"))
        assert r.returncode != 0 and "violates PodSecurity" in r.stderr and "IPC_LOCK" in r.stderr, r.stderr
        assert "hostPath" in r.stderr, r.stderr
        r = run_cli("deploy", "--spec", default, "-n", ns, "--release", "psa", "--dry-run")
        text = r.out + r.err
        assert r.code == 2 and "FAIL pod_security" in text, text
        assert f"kubectl label namespace {ns} pod-security.kubernetes.io/enforce=privileged --overwrite" in text, text

        small = write_spec({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8, "moe_ep": 8},
                            "deploy": {"storage": {"kind": "newClaim", "access_modes": ["ReadWriteOnce"]}}})
        r = _kubectl(kenv, "create", "--dry-run=server", "-n", ns, "-f", "-",
                     stdin=_leader_pod(run_cli, small, tmp_path / "b"))
        assert r.returncode == 0, r.stderr
        r = run_cli("deploy", "--spec", small, "-n", ns, "--release", "psa", "--dry-run")
        text = r.out + r.err
        assert r.code == 0, text
        assert f"namespace {ns} enforces baseline; the pods need baseline" in text, text
    finally:
        _kubectl(kenv, "delete", "namespace", ns, "--wait=false")


def test_create_namespace_labels_the_pod_security_level(kenv, run_cli):
    ns = "dsv3-psa-new"
    try:
        r = run_cli("deploy", "-n", ns, "--release", "psanew", "--create-namespace", "--no-wait", "--skip-preflight")
        assert r.code == 0, r.out + r.err
        r = _kubectl(kenv, "get", "namespace", ns, "-o", "jsonpath={.metadata.labels}")
        assert '"pod-security.kubernetes.io/enforce":"privileged"' in r.stdout, r.stdout
    finally:
        helm = str(kenv.helm)
        subprocess.run([helm, "uninstall", "psanew", "-n", ns, "--wait", "--timeout", "120s"], capture_output=True,
                       check=False, env=kenv.env, timeout=180)
        _kubectl(kenv, "delete", "namespace", ns, "--wait=false")
