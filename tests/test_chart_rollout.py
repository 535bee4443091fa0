"""Chart rules that keep a running deployment safe, checked on `dsv3ctl render` output (helm template):
RDMA only for multi-node groups, storage access modes refused before anything is created, pod templates that
change only when the pods must, content-addressed artifact paths, the PDB and rollout keys, no Helm hooks but
the test Pod, and the prepare Job (kubeconform-checked)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from chart_tools import CHART, build_schemas, kubeconform, tool


@pytest.fixture(autouse=True)
def _helm_env(monkeypatch):
    monkeypatch.setenv("DSV3CTL_HELM", tool("helm"))


def _objs(run_cli, write_spec, tmp_path: Path, spec: dict, name: str = "o", *extra: str) -> dict[str, dict]:
    out = tmp_path / name
    r = run_cli("render", "--spec", write_spec(spec, f"{name}.yaml"), "--out", out, *extra)
    assert r.code == 0, r.err
    return {o["kind"] + "/" + o["metadata"]["name"]: o
            for o in (yaml.safe_load(f.read_text()) for f in sorted(out.glob("[0-9][0-9]-*.yaml")))}


def _lws(objs: dict[str, dict]) -> dict:
    return next(o for o in objs.values() if o["kind"] == "LeaderWorkerSet")


def _leader(objs: dict[str, dict]) -> dict:
    return _lws(objs)["spec"]["leaderWorkerTemplate"]["leaderTemplate"]


ONE_NODE = {"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}, "hardware": {"gpu": "H200"}}


def test_one_node_group_renders_without_rdma(run_cli, write_spec, tmp_path):
    objs = _objs(run_cli, write_spec, tmp_path, ONE_NODE)
    c = _leader(objs)["spec"]["containers"][0]
    assert not any(k.startswith("rdma/") for k in c["resources"]["limits"])
    assert "securityContext" not in c or "IPC_LOCK" not in str(c["securityContext"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NCCL_IB_DISABLE"] == "1"
    spec = yaml.safe_load(next(o for o in objs.values() if o["kind"] == "ConfigMap")["data"]["spec.yaml"])
    assert spec["launch"]["rdma"] is False  # the launcher skips the IB checks
    # two nodes: auto turns it on; an explicit false wins
    two = _leader(_objs(run_cli, write_spec, tmp_path, {}, "two"))["spec"]["containers"][0]
    assert two["resources"]["limits"]["rdma/ib"] == "1"
    off = _leader(_objs(run_cli, write_spec, tmp_path, {"deploy": {"rdma": {"enabled": False}}}, "off"))
    assert "rdma/ib" not in off["spec"]["containers"][0]["resources"]["limits"]


def test_plan_says_which_rdma_and_why(run_cli, write_spec):
    r = run_cli("plan", "--spec", write_spec(ONE_NODE))
    assert r.code == 0, r.out + r.err
    assert "rdma: off: deploy.rdma.enabled=auto and parallelism.nodes=1" in r.out
    r = run_cli("plan")
    assert "rdma: on: deploy.rdma.enabled=auto and parallelism.nodes=2" in r.out


def test_helm_alone_resolves_rdma_auto():
    """`helm install` without dsv3ctl: the template resolves auto from parallelism.nodes itself."""
    import subprocess

    r = subprocess.run([tool("helm"), "template", "t", str(CHART), "--kube-version", "1.36.0", "--set",
                        "parallelism.nodes=1,parallelism.tp=8,deploy.rdma.enabled=auto"],
                       capture_output=True, text=True, check=True)
    lws = next(d for d in yaml.safe_load_all(r.stdout) if d and d["kind"] == "LeaderWorkerSet")
    assert "rdma/ib" not in str(lws["spec"]["leaderWorkerTemplate"]["workerTemplate"])


@pytest.mark.parametrize("modes", [["ReadWriteOnce"], ["ReadWriteOncePod"]])
def test_rwo_claim_for_two_nodes_is_refused(run_cli, write_spec, tmp_path, modes):
    bad = {"deploy": {"storage": {"kind": "newClaim", "access_modes": modes}}}
    r = run_cli("render", "--spec", write_spec(bad), "--out", tmp_path / "o")
    assert r.code == 2
    assert f"deploy.storage.access_modes={modes}" in r.err and "Multi-Attach" in r.err and "ReadOnlyMany" in r.err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.yaml"))  # nothing rendered
    r = run_cli("plan", "--spec", write_spec(bad))
    assert r.code == 2 and "FAIL storage" in r.out
    # the suggested fixes pass: ReadOnlyMany for serving only, ReadWriteMany with the prepare Job
    for fix in ({"access_modes": ["ReadOnlyMany"]}, {"access_modes": ["ReadWriteMany"]}):
        ok = {"deploy": {"storage": {"kind": "newClaim", **fix}}}
        assert run_cli("render", "--spec", write_spec(ok, "ok.yaml"), "--out", tmp_path / "ok").code == 0
    prep = {"deploy": {"prepare": {"enabled": True}, "storage": {"kind": "newClaim", "access_modes": ["ReadOnlyMany"]}}}
    r = run_cli("render", "--spec", write_spec(prep, "p.yaml"), "--out", tmp_path / "p")
    assert r.code == 2 and "needs ReadWriteMany" in r.err
    # one node, one group: a ReadWriteOnce claim is fine
    one = {**ONE_NODE, "deploy": {"storage": {"kind": "newClaim", "access_modes": ["ReadWriteOnce"]}}}
    assert run_cli("render", "--spec", write_spec(one, "one.yaml"), "--out", tmp_path / "one").code == 0


def test_models_volume_is_read_only_in_serving_pods(run_cli, write_spec, tmp_path):
    objs = _objs(run_cli, write_spec, tmp_path, {})
    for role in ("leaderTemplate", "workerTemplate"):
        c = _lws(objs)["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"][0]
        m = next(x for x in c["volumeMounts"] if x["name"] == "models")
        assert m["readOnly"] is True


def test_pod_templates_ignore_what_changes_no_pod(run_cli, write_spec, tmp_path):
    base = _lws(_objs(run_cli, write_spec, tmp_path, {}, "base"))["spec"]["leaderWorkerTemplate"]
    for i, change in enumerate([{"replicas": 3}, {"service_type": "LoadBalancer"}, {"pdb": False},
                                {"helm_test": False}, {"helm_test_image": "registry.example.com/busybox:1"},
                                {"network_policy": True}, {"max_unavailable": 2},
                                {"max_recreations": 9}, {"unschedulable_grace_s": 30}]):
        other = _objs(run_cli, write_spec, tmp_path, {"deploy": change}, f"c{i}")
        assert _lws(other)["spec"]["leaderWorkerTemplate"] == base, change
    # a change the pods see rolls them
    rolled = _lws(_objs(run_cli, write_spec, tmp_path, {"serving": {"max_batch_size": 8}}, "r"))
    assert rolled["spec"]["leaderWorkerTemplate"] != base


def test_chart_version_bump_keeps_pod_templates(run_cli, tmp_path, monkeypatch):
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"], meta["appVersion"] = "9.9.9", "9.9.9"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    got = []
    for c in (CHART, chart):
        out = tmp_path / c.name
        assert run_cli("render", "--chart", c, "--out", out).code == 0
        lws = yaml.safe_load(next(out.glob("*-leaderworkerset-*.yaml")).read_text())
        got.append((lws["metadata"]["labels"]["helm.sh/chart"], lws["spec"]["leaderWorkerTemplate"]))
    assert got[0][0] != got[1][0]  # the LWS object itself carries the chart label
    assert got[0][1] == got[1][1]  # its pod templates do not


def _launch(objs: dict[str, dict]) -> dict:
    return yaml.safe_load(next(o for o in objs.values() if o["kind"] == "ConfigMap")["data"]["spec.yaml"])["launch"]


def test_artifacts_are_content_addressed(run_cli, write_spec, tmp_path):
    old = _launch(_objs(run_cli, write_spec, tmp_path, {}, "old"))
    root = "/models/artifacts/"
    assert old["model_repository"].startswith(root) and old["engine_dir"].startswith(root)
    fp_old = old["model_repository"].split("/")[3]
    assert len(fp_old) == 16 and old["engine_dir"] == f"{root}{fp_old}/engines"
    assert old["model_dir"] == "/models/hf"  # the checkpoint is shared by every fingerprint
    new = _launch(_objs(run_cli, write_spec, tmp_path, {"serving": {"max_batch_size": 8}}, "new"))
    fp_new = new["model_repository"].split("/")[3]
    assert fp_new != fp_old  # an upgrade writes a new directory
    again = _launch(_objs(run_cli, write_spec, tmp_path, {}, "again"))
    assert again == old  # a rollback reads the old one
    probe = _launch(_objs(run_cli, write_spec, tmp_path, {"serving": {"load_timeout_s": 7200}}, "probe"))
    assert probe["model_repository"] == old["model_repository"]  # a probe budget is not an artifact input
    fixed = _launch(_objs(run_cli, write_spec, tmp_path, {"deploy": {"storage": {"artifacts_dir": ""}}}, "fixed"))
    assert fixed["model_repository"] == "/models/triton_model_repo" and fixed["engine_dir"] == ""


def test_rendered_values_used_as_a_spec_do_not_nest(tmp_path):
    from dsv3ctl.core.spec import load_spec, parse_spec
    from dsv3ctl.render.values import render_values

    v1 = render_values(load_spec(None))
    v2 = render_values(parse_spec(v1))
    assert v2["launch"]["model_repository"] == v1["launch"]["model_repository"]


def test_rollout_and_pdb(run_cli, write_spec, tmp_path):
    one = _lws(_objs(run_cli, write_spec, tmp_path, {}, "a"))["spec"]["rolloutStrategy"]
    assert one["rollingUpdateConfiguration"] == {"maxUnavailable": 1, "maxSurge": 0}
    objs = _objs(run_cli, write_spec, tmp_path, {"deploy": {"replicas": 3}}, "b")
    assert _lws(objs)["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxUnavailable": 1, "maxSurge": 1}
    pdb = next(o for o in objs.values() if o["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    r = run_cli("plan", "--spec", write_spec({"deploy": {"replicas": 3}}, "p.yaml"))
    assert "maxSurge=1 maxUnavailable=1: an upgrade needs 16 extra GPUs" in r.out
    r = run_cli("render", "--spec", write_spec({"deploy": {"max_surge": 0, "max_unavailable": 0}}, "z.yaml"),
                "--out", tmp_path / "z")
    assert r.code == 2 and "max_unavailable=0 with max_surge=0" in r.err


def test_no_helm_hooks_but_the_test_pod(run_cli, write_spec, tmp_path):
    objs = _objs(run_cli, write_spec, tmp_path, {"deploy": {"prepare": {"enabled": True}, "replicas": 2,
                                                            "storage": {"kind": "newClaim"}}})
    hooks = {k: o["metadata"].get("annotations", {}) for k, o in objs.items()
             if "helm.sh/hook" in (o["metadata"].get("annotations") or {})}
    assert list(hooks) == ["Pod/dsv3-test-ready"]
    assert "hook-succeeded" in hooks["Pod/dsv3-test-ready"]["helm.sh/hook-delete-policy"]


def test_prepare_job_objects(tmp_path):
    from dsv3ctl.core.spec import parse_spec
    from dsv3ctl.render.artifacts import artifact_dir
    from dsv3ctl.render.prepare_job import claim_object, prepare_objects
    from dsv3ctl.render.values import artifact_fingerprint, render_values

    files = []
    for i, (spec, completions) in enumerate([
        ({"deploy": {"prepare": {"enabled": True}, "storage": {"kind": "newClaim"}}}, 1),
        ({"deploy": {"prepare": {"enabled": True}}}, 2),  # per-node hostPath
        ({"serving": {"mode": "llmapi"}, "deploy": {"prepare": {"enabled": True}, "hf_token_secret": "hf"}}, 1),
    ]):
        s = parse_spec(spec)
        v = render_values(s)
        fp = artifact_fingerprint(s)
        cm, job = prepare_objects(v, fp, artifact_dir(s, fp), namespace="ns", completions=completions)
        assert job["metadata"]["name"] == f"dsv3-prepare-{fp}" and cm["metadata"]["name"] == job["metadata"]["name"]
        pod = job["spec"]["template"]["spec"]
        assert job["spec"]["activeDeadlineSeconds"] == 36000 and job["spec"]["completions"] == completions
        c = pod["containers"][0]
        assert f"M=/models/artifacts/{fp}/.ready" in c["args"][0]
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == ("8" if s.serving.mode == "engine" else None)  # llmapi prepares without GPUs
        assert ("affinity" in pod) is (completions > 1)
        assert "helm.sh/hook" not in str(job)
        assert yaml.safe_load(cm["data"]["spec.yaml"])["launch"]["model_repository"].startswith(f"/models/artifacts/{fp}/")
        for o in (cm, job) + ((claim_object(v, "ns"),) if s.deploy.storage.kind == "newClaim" else ()):
            f = tmp_path / f"{i}-{o['kind']}.yaml"
            f.write_text(yaml.safe_dump(o))
            files.append(f)
    r = kubeconform(files, build_schemas(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


PASSTHROUGH = {"deploy": {
    "scheduler_name": "volcano", "priority_class_name": "inference",
    "pod_labels": {"kueue.x-k8s.io/queue-name": "gpu", "app.kubernetes.io/name": "not-this"},
    "pod_annotations": {"k8s.v1.cni.cncf.io/networks": "rdma-net"},
    "extra_volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}},
                      {"name": "certs", "secret": {"secretName": "ca"}}],
    "extra_volume_mounts": [{"name": "cache", "mountPath": "/cache"},
                            {"name": "certs", "mountPath": "/etc/ca", "readOnly": True}],
    "env": {"HTTPS_PROXY": "http://proxy:3128"},
    "env_from_secrets": [{"name": "WANDB_API_KEY", "secret": "wandb", "key": "key"}]}}


def test_passthrough_keys_reach_the_pods_and_pass_kubeconform(run_cli, write_spec, tmp_path):
    objs = _objs(run_cli, write_spec, tmp_path, PASSTHROUGH, "p")
    t = _leader(objs)
    assert t["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert t["metadata"]["labels"]["app.kubernetes.io/name"] == "dsv3"  # the chart's selector labels win
    assert t["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "rdma-net"
    spec = t["spec"]
    assert spec["schedulerName"] == "volcano" and spec["priorityClassName"] == "inference"
    assert {"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}} in spec["volumes"]
    c = spec["containers"][0]
    assert {"name": "certs", "mountPath": "/etc/ca", "readOnly": True} in c["volumeMounts"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HTTPS_PROXY"]["value"] == "http://proxy:3128"
    assert env["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "key", "optional": False}}
    r = kubeconform(sorted((tmp_path / "p").glob("[0-9][0-9]-*.yaml")), build_schemas(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("change", "needle"), [
    ({"extra_volume_mounts": [{"name": "nope", "mountPath": "/x"}]}, "'nope' is not in deploy.extra_volumes"),
    ({"extra_volumes": [{"name": "models", "emptyDir": {}}]}, "not one the chart uses"),
    ({"extra_volumes": [{"name": "x"}]}, "exactly one volume source"),
    ({"pod_labels": {"bad key!": "v"}}, "deploy.pod_labels"),
    ({"env_from_secrets": [{"name": "A", "secret": "Bad_Name", "key": "k"}]}, "deploy.env_from_secrets.0.secret"),
])
def test_passthrough_keys_are_validated(run_cli, write_spec, tmp_path, change, needle):
    r = run_cli("render", "--spec", write_spec({"deploy": change}), "--out", tmp_path / "o")
    assert r.code == 2 and needle in r.err, r.err


def test_resources_security_and_grace(run_cli, write_spec, tmp_path):
    objs = _objs(run_cli, write_spec, tmp_path, {})
    spec = _leader(objs)["spec"]
    res = spec["containers"][0]["resources"]
    assert res["requests"]["memory"] == res["limits"]["memory"] == "431Gi"  # 8 x 41.8 GiB + 64Gi shm + 32Gi
    assert res["requests"]["ephemeral-storage"] == res["limits"]["ephemeral-storage"] == "50Gi"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert spec["terminationGracePeriodSeconds"] == 4096 * 50 // 1000 + 1 + 30  # ceil(204.8) + 30
    r = run_cli("plan")
    assert "memory request = limit 431Gi" in r.out and "terminationGracePeriodSeconds 235" in r.out
    fixed = _leader(_objs(run_cli, write_spec, tmp_path, {"deploy": {"memory": "200Gi", "termination_grace_s": 90}},
                          "f"))["spec"]
    assert fixed["containers"][0]["resources"]["limits"]["memory"] == "200Gi"
    assert fixed["terminationGracePeriodSeconds"] == 90


@pytest.mark.parametrize(("serving", "port", "path"), [
    ({}, "metrics", "/metrics"),
    ({"mode": "llmapi", "frontend": "trtllm-serve"}, "openai", "/prometheus/metrics"),
])
def test_service_monitor_per_mode_and_only_with_its_crd(serving, port, path, tmp_path):
    import subprocess

    from dsv3ctl.core.spec import parse_spec
    from dsv3ctl.render.values import render_values, values_yaml

    v = render_values(parse_spec({"serving": serving, "deploy": {"service_monitor": True,
                                                                 "service_monitor_labels": {"release": "prom"}}}))
    f = tmp_path / "v.yaml"
    f.write_text(values_yaml(v))
    base = [tool("helm"), "template", "t", str(CHART), "-f", str(f), "--kube-version", "1.36.0"]
    with_crd = subprocess.run([*base, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"],
                              capture_output=True, text=True, check=True).stdout
    sm = next(d for d in yaml.safe_load_all(with_crd) if d and d["kind"] == "ServiceMonitor")
    assert sm["spec"]["endpoints"] == [{"port": port, "path": path, "interval": "30s"}]
    assert sm["metadata"]["labels"]["release"] == "prom"
    without = subprocess.run(base, capture_output=True, text=True, check=True).stdout
    assert "ServiceMonitor" not in [d["kind"] for d in yaml.safe_load_all(without) if d]


def test_purge_job_objects(tmp_path):
    from dsv3ctl.core.spec import parse_spec
    from dsv3ctl.render.artifacts import artifacts_root
    from dsv3ctl.render.prepare_job import purge_objects
    from dsv3ctl.render.values import artifact_fingerprint, render_values

    s = parse_spec({"deploy": {"prepare": {"enabled": True}}})
    fp = artifact_fingerprint(s)
    cm, job = purge_objects(render_values(s), fp, artifacts_root(s), [fp, "0123456789abcdef"], namespace="ns",
                            completions=2)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert f"! -name 0123456789abcdef ! -name {fp}" in c["args"][0] and "rm -rf" in c["args"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "purge"
    with pytest.raises(ValueError):
        purge_objects(render_values(s), fp, artifacts_root(s), ["../etc"], namespace="ns")
    for o in (cm, job):
        (tmp_path / f"{o['kind']}.yaml").write_text(yaml.safe_dump(o))
    r = kubeconform(sorted(tmp_path.glob("*.yaml")), build_schemas(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_prepare_pods_are_not_repelled_by_the_serving_pods(run_cli, write_spec, tmp_path):
    """The serving pods' required anti-affinity selects name + instance; the prepare pods must not match it,
    or they could never run on a node that serves (llmapi prepare needs no GPUs)."""
    from dsv3ctl.core.spec import parse_spec
    from dsv3ctl.render.prepare_job import prepare_objects
    from dsv3ctl.render.values import render_values

    objs = _objs(run_cli, write_spec, tmp_path, {})
    anti = _leader(objs)["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    sel = anti[0]["labelSelector"]["matchLabels"]
    _, job = prepare_objects(render_values(parse_spec({})), "0" * 16, "/models/artifacts/" + "0" * 16, namespace="ns")
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not all(pod_labels.get(k) == v for k, v in sel.items())
    assert pod_labels["app.kubernetes.io/instance"] == "dsv3"  # undeploy still finds them by release
