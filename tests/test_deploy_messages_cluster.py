"""What `deploy` says before it changes anything, on the local cluster: a GPU product label that no node
carries is named as the cause (not "use fewer nodes"), and a dry run says it would replace a running release
whose group size differs."""

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
