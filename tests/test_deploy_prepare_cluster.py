"""The prepare Job, artifact fingerprints, storage rules, scaling and undeploy on the local cluster (kwok GPU
nodes, the real scheduler, Job controller and LWS manager; kwok completes Job pods without running them, so the
artifact directories are shown through the fingerprints the Jobs and the pods' spec name)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

pytestmark = pytest.mark.cluster

NS = "dsv3-prep"


@pytest.fixture
def kenv(testbed, monkeypatch):
    for k, v in testbed.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DSV3CTL_HELM", str(testbed.helm))
    yield testbed
    left = subprocess.run([str(testbed.helm), "list", "-n", NS, "-q"], capture_output=True, text=True,
                          check=False, env=testbed.env).stdout.split()
    for rel in left:
        subprocess.run([str(testbed.helm), "uninstall", rel, "-n", NS, "--wait", "--timeout", "120s"],
                       capture_output=True, check=False, env=testbed.env)
    subprocess.run([str(testbed.kubectl), "-n", NS, "delete", "job,pod,configmap,pvc", "--all", "--wait=true",
                    "--timeout=60s"], capture_output=True, check=False, env=testbed.env)


def _kubectl(tb, *args: str, input: str | None = None) -> str:
    return subprocess.run([str(tb.kubectl), *args], capture_output=True, text=True, check=True, env=tb.env,
                          input=input).stdout


def _json(tb, *args: str) -> dict:
    return json.loads(_kubectl(tb, "-n", NS, "get", *args, "-o", "json"))


def _pv(tb, name: str, claim: str, modes: list[str]) -> None:
    """A PersistentVolume pre-bound to ``claim`` (the testbed has no provisioner)."""
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": modes, "storageClassName": "",
                   "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{name}"},
                   "claimRef": {"namespace": NS, "name": claim}}}
    _kubectl(tb, "apply", "-f", "-", input=yaml.safe_dump(pv))


def _spec_launch(tb, rel: str) -> dict:
    cm = _json(tb, "configmap", f"{rel}-dsv3-spec")
    return yaml.safe_load(cm["data"]["spec.yaml"])["launch"]


def _jobs(tb, rel: str) -> dict[str, dict]:
    items = _json(tb, "job", "-l", f"app.kubernetes.io/instance={rel},app.kubernetes.io/component=prepare")["items"]
    return {j["metadata"]["labels"]["dsv3ctl.io/fingerprint"]: j for j in items}


def test_new_claim_prepare_upgrade_rollback_undeploy(kenv, run_cli, write_spec):
    rel = "prep"
    _pv(kenv, f"{NS}-{rel}-models", f"{rel}-dsv3-models", ["ReadWriteMany"])
    base = {"deploy": {"prepare": {"enabled": True, "timeout_s": 120},
                       "storage": {"kind": "newClaim", "size": "1Gi", "access_modes": ["ReadWriteMany"]}}}
    r = run_cli("deploy", "--spec", write_spec(base, "v1.yaml"), "-n", NS, "--release", rel, "--create-namespace",
                "--timeout", "240")
    assert r.code == 0, r.out + r.err
    out = r.out
    order = [out.index(s) for s in ("created PVC", "created prepare Job", "succeeded in", "helm upgrade --install")]
    assert order == sorted(order), out
    jobs = _jobs(kenv, rel)
    (fp1,) = jobs
    done = jobs[fp1]["status"]["completionTime"]
    pods = _json(kenv, "pod", "-l", "app.kubernetes.io/instance=prep,app.kubernetes.io/component in (leader,worker)")
    assert pods["items"] and all(p["metadata"]["creationTimestamp"] >= done for p in pods["items"])
    pvc = _json(kenv, "pvc", f"{rel}-dsv3-models")
    assert pvc["metadata"]["annotations"]["meta.helm.sh/release-name"] == rel  # adopted by the release
    assert _spec_launch(kenv, rel)["model_repository"] == f"/models/artifacts/{fp1}/triton_model_repo"

    # an upgrade that changes the artifacts: the prepare Job would need the GPUs the running group holds
    v2 = write_spec({**base, "serving": {"max_batch_size": 8}}, "v2.yaml")
    r = run_cli("deploy", "--spec", v2, "-n", NS, "--release", rel, "--timeout", "240")
    assert r.code == 2, r.out + r.err
    assert "never takes a running group's GPUs" in r.err and "--stop-for-prepare" in r.err
    assert list(_jobs(kenv, rel)) == [fp1]  # nothing created
    r = run_cli("deploy", "--spec", v2, "-n", NS, "--release", rel, "--timeout", "240", "--stop-for-prepare")
    assert r.code == 0, r.out + r.err
    jobs = _jobs(kenv, rel)
    assert len(jobs) == 2 and all(j["status"].get("succeeded") for j in jobs.values())
    (fp2,) = set(jobs) - {fp1}
    assert _spec_launch(kenv, rel)["model_repository"] == f"/models/artifacts/{fp2}/triton_model_repo"
    assert _json(kenv, "leaderworkerset", f"{rel}-dsv3")["spec"]["replicas"] == 1  # created again by the upgrade

    # rollback: the old fingerprint's Job is still the record of a complete directory; nothing is rebuilt
    subprocess.run([str(kenv.helm), "rollback", rel, "1", "-n", NS], check=True, capture_output=True, env=kenv.env)
    assert _spec_launch(kenv, rel)["model_repository"] == f"/models/artifacts/{fp1}/triton_model_repo"
    r = run_cli("deploy", "--spec", write_spec(base, "v1.yaml"), "-n", NS, "--release", rel, "--timeout", "240")
    assert r.code == 0, r.out + r.err
    assert f"prepare Job {rel}-dsv3-prepare-{fp1} already succeeded" in r.out
    assert set(_jobs(kenv, rel)) == {fp1, fp2}

    # purge: a short Job removes every other fingerprint's directory, then its record
    r = run_cli("prepare", "--spec", write_spec(base, "v1.yaml"), "-n", NS, "--release", rel, "--purge",
                "--output", "json")
    assert r.code == 0, r.out + r.err
    assert json.loads(r.out) == {"kept": [fp1], "removed_records": [fp2]}
    assert set(_jobs(kenv, rel)) == {fp1}
    assert "purge" not in _kubectl(kenv, "-n", NS, "get", "job", "-o", "name")

    t0 = time.monotonic()
    r = run_cli("undeploy", "-n", NS, "--release", rel, "--purge-storage", "--timeout", "60", "--output", "json")
    took = time.monotonic() - t0
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert took < 30, took
    assert data["kept_artifacts"] == [fp1]
    left = _kubectl(kenv, "-n", NS, "get", "all,secret,configmap,pvc,job,leaderworkerset", "-l",
                    f"app.kubernetes.io/instance={rel}", "-o", "name")
    assert left.strip() == ""


def test_rwo_claim_for_two_nodes_is_refused_before_anything(kenv, run_cli, write_spec):
    _kubectl(kenv, "create", "namespace", NS) if NS not in _kubectl(kenv, "get", "ns", "-o", "name") else None
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "rwo-models", "namespace": NS},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    _kubectl(kenv, "apply", "-f", "-", input=yaml.safe_dump(pvc))
    p = write_spec({"deploy": {"storage": {"kind": "existingClaim", "claim_name": "rwo-models"}}})
    r = run_cli("deploy", "--spec", p, "-n", NS, "--release", "rwo", "--timeout", "60")
    assert r.code == 2, r.out + r.err
    assert f"PVC {NS}/rwo-models accessModes=['ReadWriteOnce']" in r.err and "Multi-Attach" in r.err
    assert "rwo" not in subprocess.run([str(kenv.helm), "list", "-n", NS, "-q"], capture_output=True, text=True,
                                       env=kenv.env, check=True).stdout.split()


def test_scaling_keeps_the_running_group(kenv, run_cli, write_spec):
    """replicas 1 -> 2 adds a group; the first group's pods and the pod templates stay as they were."""
    rel = "scale"
    one = {"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}}
    r = run_cli("deploy", "--spec", write_spec(one, "a.yaml"), "-n", NS, "--release", rel, "--create-namespace",
                "--timeout", "240")
    try:
        assert r.code == 0, r.out + r.err
        before = _json(kenv, "leaderworkerset", f"{rel}-dsv3")["spec"]["leaderWorkerTemplate"]
        assert "rdma/ib" not in json.dumps(before)  # one node: no RDMA resource
        leader = _json(kenv, "pod", f"{rel}-dsv3-0")["metadata"]["uid"]
        r = run_cli("deploy", "--spec", write_spec({**one, "deploy": {"replicas": 2}}, "b.yaml"), "-n", NS,
                    "--release", rel, "--timeout", "240")
        assert r.code == 0, r.out + r.err
        lws = _json(kenv, "leaderworkerset", f"{rel}-dsv3")
        assert lws["spec"]["replicas"] == 2 and lws["spec"]["leaderWorkerTemplate"] == before
        assert _json(kenv, "pod", f"{rel}-dsv3-0")["metadata"]["uid"] == leader  # not recreated
        assert _json(kenv, "pod", f"{rel}-dsv3-1")["status"]["phase"] == "Running"
    finally:
        run_cli("undeploy", "-n", NS, "--release", rel, "--timeout", "60")
