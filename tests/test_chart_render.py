"""helm lint with both pinned Helms; the render matrix through `dsv3ctl render` validated by kubeconform
(strict, built-in schemas from Kubernetes v1.36.3's swagger + the LWS v0.9.0 CRD); golden manifests of the
default spec and of each deploy.platform preset (regenerate with DSV3CTL_REGEN=1); chart behaviour that the spec
promises."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from chart_tools import CHART, build_schemas, kubeconform, tool

GOLDEN = Path(__file__).parent / "golden" / "default"
REGEN = os.environ.get("DSV3CTL_REGEN") == "1"


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    return build_schemas(tmp_path_factory.mktemp("kubeconform-schemas"))


@pytest.fixture(autouse=True)
def _helm_env(monkeypatch):
    monkeypatch.setenv("DSV3CTL_HELM", tool("helm"))


@pytest.mark.parametrize("helm", ["helm", "helm3"])
def test_helm_lint_strict(helm):
    r = subprocess.run([tool(helm), "lint", "--strict", str(CHART), "--kube-version", "1.36.0"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout


def test_helm3_and_helm4_render_the_same(tmp_path):
    outs = []
    for h in ("helm", "helm3"):
        r = subprocess.run([tool(h), "template", "x", str(CHART), "--kube-version", "1.36.0", "-n", "ns"],
                           capture_output=True, text=True, check=True)
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        for d in docs:
            if d["kind"] == "Secret":
                d["data"] = "<generated>"
        outs.append(docs)
    assert outs[0] == outs[1]


def _spec(mode: str, nodes: int, rdma: bool, host_network: bool, storage: str) -> dict:
    spec: dict = {"serving": {"mode": mode}, "parallelism": {"nodes": nodes, "gpus_per_node": 8, "tp": 8 * nodes},
                  "deploy": {"rdma": {"enabled": rdma}, "host_network": host_network}}
    if mode == "llmapi":
        spec["serving"]["frontend"] = "trtllm-serve" if nodes == 4 else "tritonserver"
    spec["deploy"]["storage"] = {"kind": storage, "claim_name": "models" if storage == "existingClaim" else ""}
    return spec


# Every combination of RDMA x hostNetwork x storage (PVC / hostPath), each with a different mode and node
# count so every mode and 1, 2 and 4 nodes appear; plus an existing claim (helm runs once per case, 2 cores).
_MODES_NODES = list(itertools.product(["engine", "llmapi"], [1, 2, 4]))
MATRIX = [(*_MODES_NODES[i % len(_MODES_NODES)], rdma, hostnet, storage) for i, (rdma, hostnet, storage)
          in enumerate(itertools.product([False, True], [False, True], ["hostPath", "newClaim"]))]
MATRIX.append(("llmapi", 2, True, False, "existingClaim"))


def _render(run_cli, write_spec, out: Path, spec: dict) -> dict[str, dict]:
    r = run_cli("render", "--spec", write_spec(spec, f"{out.name}.yaml"), "--out", out, "--output", "json")
    assert r.code == 0, r.err
    return {f.name: yaml.safe_load(f.read_text()) for f in sorted(out.glob("[0-9][0-9]-*.yaml"))}


def test_render_matrix_passes_kubeconform(run_cli, write_spec, tmp_path, schemas):
    files: list[Path] = []
    for case in MATRIX:
        out = tmp_path / "-".join(map(str, case))
        objs = _render(run_cli, write_spec, out, _spec(*case))
        lws = next(o for o in objs.values() if o["kind"] == "LeaderWorkerSet")
        mode, nodes, rdma, hostnet, storage = case
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == nodes
        pod = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
        res = pod["containers"][0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == "8"
        assert ("rdma/ib" in res["limits"]) is rdma
        assert (pod["containers"][0].get("securityContext", {}).get("capabilities", {}).get("add") == ["IPC_LOCK"]) is rdma
        assert pod.get("hostNetwork", False) is hostnet
        assert (pod.get("dnsPolicy") == "ClusterFirstWithHostNet") is hostnet
        vol = next(v for v in pod["volumes"] if v["name"] == "models")
        assert ("hostPath" in vol) is (storage == "hostPath")
        assert any(o["kind"] == "PersistentVolumeClaim" for o in objs.values()) is (storage == "newClaim")
        files += sorted(out.glob("[0-9][0-9]-*.yaml"))
    r = kubeconform(files, schemas)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in r.stdout


def test_optional_objects_pass_kubeconform(run_cli, write_spec, tmp_path, schemas):
    objs = _render(run_cli, write_spec, tmp_path / "all", {"deploy": {
        "replicas": 3, "network_policy": True, "pdb": True, "prepare": {"enabled": True}, "exclusive_topology": "rack",
        "hf_token_secret": "hf", "ssh_secret": "my-ssh", "image_pull_secrets": ["reg"], "priority_class_name": "hi",
        "nccl": {"ib_hca": "mlx5_0", "socket_ifname": "eth0", "extra_env": {"NCCL_NVLS_ENABLE": "0"}}}})
    kinds = sorted(o["kind"] for o in objs.values())
    assert kinds.count("NetworkPolicy") == 2 and "PodDisruptionBudget" in kinds
    assert "Job" not in kinds  # the prepare Job is created by dsv3ctl before the group, not by the chart
    assert "Secret" not in kinds  # ssh_secret names an existing Secret
    pdb = next(o for o in objs.values() if o["kind"] == "PodDisruptionBudget")
    # one pod at a time; its group's other pods then count as unavailable, so one group at a time
    assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": 1} and "minAvailable" not in pdb["spec"]
    lws = next(o for o in objs.values() if o["kind"] == "LeaderWorkerSet")
    assert lws["metadata"]["annotations"]["leaderworkerset.sigs.k8s.io/exclusive-topology"] == "rack"
    env = {e["name"]: e.get("value") for e in lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]["env"]}
    assert env["NCCL_IB_HCA"] == "mlx5_0" and env["NCCL_SOCKET_IFNAME"] == "eth0" and env["NCCL_NVLS_ENABLE"] == "0"
    r = kubeconform(sorted((tmp_path / "all").glob("[0-9][0-9]-*.yaml")), schemas)
    assert r.returncode == 0, r.stdout + r.stderr


def _mask(obj: dict) -> dict:
    if obj["kind"] == "Secret":
        obj = {**obj, "data": {k: "<generated>" for k in obj["data"]}}
    return obj


#: Golden renders: the default spec, and the default spec with each deploy.platform preset (gke on H200, the GPU
#: whose GKE preset carries the RDMA multi-networking keys; the others on the default H100-80GB).
GOLDEN_SPECS: dict[str, dict | None] = {
    "default": None,
    "gke": {"hardware": {"gpu": "H200"}, "deploy": {"platform": "gke"}},
    "eks": {"deploy": {"platform": "eks"}},
    "aks": {"deploy": {"platform": "aks"}},
    "network-operator": {"deploy": {"platform": "network-operator"}},
}


def _golden_render(run_cli, write_spec, out: Path, spec: dict | None) -> dict[str, str]:
    args = ["render", "--out", out] + ([] if spec is None else ["--spec", write_spec(spec, f"{out.name}.yaml")])
    r = run_cli(*args)
    assert r.code == 0, r.err
    return {f.name: yaml.safe_dump(_mask(yaml.safe_load(f.read_text())), sort_keys=False, width=120)
            for f in sorted(out.glob("[0-9][0-9]-*.yaml"))}


@pytest.mark.parametrize("name", list(GOLDEN_SPECS))
def test_golden_manifests(run_cli, write_spec, tmp_path, schemas, name):
    golden = GOLDEN.parent / name
    out = tmp_path / name
    got = _golden_render(run_cli, write_spec, out, GOLDEN_SPECS[name])
    if REGEN:
        golden.mkdir(parents=True, exist_ok=True)
        for f in golden.glob("*.yaml"):
            f.unlink()
        for fname, text in got.items():
            (golden / fname).write_text(text)
    want = {f.name: f.read_text() for f in sorted(golden.glob("*.yaml"))}
    assert sorted(got) == sorted(want), "object list changed; regenerate with DSV3CTL_REGEN=1"
    for fname in want:
        assert got[fname] == want[fname], f"{fname} differs from tests/golden/{name} (DSV3CTL_REGEN=1 regenerates)"
    if name != "default":  # the default's objects are validated by the render matrix
        r = kubeconform(sorted(out.glob("[0-9][0-9]-*.yaml")), schemas)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Invalid: 0, Errors: 0, Skipped: 0" in r.stdout


def test_generic_platform_renders_the_default_byte_for_byte(run_cli, write_spec, tmp_path):
    """deploy.platform=generic (written out) renders exactly what the default spec renders."""
    r = run_cli("render", "--out", tmp_path / "d")
    assert r.code == 0, r.err
    r = run_cli("render", "--spec", write_spec({"deploy": {"platform": "generic"}}), "--out", tmp_path / "g")
    assert r.code == 0, r.err
    default = {f.name: f.read_bytes() for f in (tmp_path / "d").glob("[0-9][0-9]-*.yaml") if "secret" not in f.name}
    generic = {f.name: f.read_bytes() for f in (tmp_path / "g").glob("[0-9][0-9]-*.yaml") if "secret" not in f.name}
    assert default and default == generic


def _lws_pod(objs: dict[str, dict]) -> dict:
    lws = next(o for o in objs.values() if o["kind"] == "LeaderWorkerSet")
    return lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]


def test_platform_presets_reach_the_pods(run_cli, write_spec, tmp_path):
    eks = _lws_pod(_render(run_cli, write_spec, tmp_path / "eks", {"deploy": {"platform": "eks"}}))
    c = eks["spec"]["containers"][0]
    assert c["resources"]["limits"]["vpc.amazonaws.com/efa"] == "1" and "rdma/ib" not in c["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert eks["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    gke = _lws_pod(_render(run_cli, write_spec, tmp_path / "gke", GOLDEN_SPECS["gke"]))
    c = gke["spec"]["containers"][0]
    assert gke["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h200-141gb"}
    assert '"network":"rdma-7"' in gke["metadata"]["annotations"]["networking.gke.io/interfaces"]
    # RDMA on (IPC_LOCK, no NCCL_IB_DISABLE) without an extended resource: GKE's NICs come through the annotation
    assert set(c["resources"]["limits"]) == {"memory", "ephemeral-storage", "nvidia.com/gpu"}
    assert c["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert "NCCL_IB_DISABLE" not in {e["name"] for e in c["env"]}


def test_explicit_keys_override_the_preset(run_cli, write_spec, tmp_path):
    spec = {"deploy": {"platform": "eks", "rdma": {"resource": "rdma/ib", "count": 4},
                       "nccl": {"extra_env": {"FI_PROVIDER": "shm"}}, "node_selector": {"pool": "gpu"}}}
    pod = _lws_pod(_render(run_cli, write_spec, tmp_path / "o", spec))
    c = pod["spec"]["containers"][0]
    assert c["resources"]["limits"]["rdma/ib"] == "4" and "vpc.amazonaws.com/efa" not in c["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FI_PROVIDER"] == "shm"  # the spec's entry wins ...
    assert env["FI_EFA_USE_DEVICE_RDMA"] == "1"  # ... the preset's other entries are still added
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu", "node.kubernetes.io/instance-type": "p5.48xlarge"}


def test_default_leader_and_worker_contract(run_cli, tmp_path):
    r = run_cli("render", "--out", tmp_path / "d")
    assert r.code == 0
    objs = {f.name: yaml.safe_load(f.read_text()) for f in (tmp_path / "d").glob("[0-9][0-9]-*.yaml")}
    lws = next(o for o in objs.values() if o["kind"] == "LeaderWorkerSet")
    t = lws["spec"]["leaderWorkerTemplate"]
    assert t["restartPolicy"] == "RecreateGroupOnPodRestart" and lws["spec"]["startupPolicy"] == "LeaderCreated"
    leader, worker = t["leaderTemplate"]["spec"]["containers"][0], t["workerTemplate"]["spec"]["containers"][0]
    assert leader["command"] == ["dsv3ctl"] and leader["args"] == ["launch", "leader"] and worker["args"] == ["launch", "worker"]
    # startup budget = serving.load_timeout_s (3600) / period (10)
    assert leader["startupProbe"]["failureThreshold"] * leader["startupProbe"]["periodSeconds"] == 3600
    assert leader["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert worker["readinessProbe"]["tcpSocket"]["port"] == "ssh"
    assert {"name": "ssh", "containerPort": 2222, "protocol": "TCP"} in worker["ports"]
    mounts = {m["name"]: m["mountPath"] for m in leader["volumeMounts"]}
    assert mounts == {"dshm": "/dev/shm", "models": "/models", "ssh": "/etc/dsv3ctl/ssh", "spec": "/etc/dsv3ctl/spec"}
    vols = {v["name"]: v for v in t["leaderTemplate"]["spec"]["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    spec_cm = next(o for o in objs.values() if o["kind"] == "ConfigMap")
    from dsv3ctl.core.spec import parse_spec

    parse_spec(yaml.safe_load(spec_cm["data"]["spec.yaml"]), "configmap")  # the launcher can load it
    svc = next(o for o in objs.values() if o["kind"] == "Service")
    assert svc["spec"]["selector"] == {"leaderworkerset.sigs.k8s.io/name": "dsv3",
                                       "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000, 8001, 8002]


def test_llmapi_trtllm_serve_probes_and_port(run_cli, write_spec, tmp_path):
    objs = _render(run_cli, write_spec, tmp_path / "l", {"serving": {"mode": "llmapi", "frontend": "trtllm-serve",
                                                                     "load_timeout_s": 7200}})
    lws = next(o for o in objs.values() if o["kind"] == "LeaderWorkerSet")
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    assert leader["readinessProbe"]["httpGet"] == {"path": "/health", "port": "openai"}
    assert leader["startupProbe"]["failureThreshold"] == 720
    svc = next(o for o in objs.values() if o["kind"] == "Service")
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("openai", 8080)]


def test_two_releases_never_select_each_other(run_cli, tmp_path):
    sel = {}
    for rel in ("a", "b"):
        r = run_cli("render", "--release", rel, "--out", tmp_path / rel)
        assert r.code == 0
        objs = [yaml.safe_load(f.read_text()) for f in (tmp_path / rel).glob("[0-9][0-9]-*.yaml")]
        lws = next(o for o in objs if o["kind"] == "LeaderWorkerSet")
        svc = next(o for o in objs if o["kind"] == "Service")
        pod_labels = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]
        anti = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["affinity"]["podAntiAffinity"]
        sel[rel] = (lws["metadata"]["name"], svc["spec"]["selector"], pod_labels,
                    anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]["matchLabels"])
    assert sel["a"][0] == "a-dsv3" != sel["b"][0] == "b-dsv3"
    assert sel["a"][1]["leaderworkerset.sigs.k8s.io/name"] != sel["b"][1]["leaderworkerset.sigs.k8s.io/name"]
    for x, y in (("a", "b"), ("b", "a")):
        assert not all(sel[y][2].get(k) == v for k, v in sel[x][3].items())  # anti-affinity is release-scoped
