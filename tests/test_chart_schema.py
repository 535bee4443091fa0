"""values.schema.json and values.yaml of helm/dsv3 are the spec model's JSON Schema and default spec
(regenerate both with DSV3CTL_REGEN=1); helm rejects bad values with messages naming the key."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from chart_tools import CHART, tool

from dsv3ctl.core.spec import Spec, load_spec
from dsv3ctl.render.values import (
    chart_default_values_yaml,
    chart_readme_text,
    chart_values_schema,
    chart_values_schema_text,
    render_values,
)

REGEN = os.environ.get("DSV3CTL_REGEN") == "1"


def _sync(path, text):  # type: ignore[no-untyped-def]
    if REGEN:
        path.write_text(text)
    assert path.read_text() == text, f"{path} drifted from the spec model; regenerate with DSV3CTL_REGEN=1 pytest {__file__}"


def test_schema_file_is_the_spec_schema():
    _sync(CHART / "values.schema.json", chart_values_schema_text())


def test_values_file_is_the_rendered_default_spec():
    _sync(CHART / "values.yaml", chart_default_values_yaml())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values == render_values(load_spec(None))
    Spec.model_validate(values)  # the chart defaults are a valid spec, so the pods' DSV3CTL_SPEC loads


def test_chart_readme_is_generated_from_the_schema():
    _sync(CHART / "README.md", chart_readme_text())
    text = (CHART / "README.md").read_text()
    for key in ("deploy.storage.artifacts_dir", "deploy.rdma.enabled", "deploy.prepare.timeout_s", "serving.max_seq_len"):
        assert f"| `{key}` |" in text


def test_values_file_is_commented():
    text = (CHART / "values.yaml").read_text()
    assert "# Nodes per model instance (LeaderWorkerSet size)" in text
    assert text.count("\n  # ") > 50  # nested keys carry their descriptions


def test_every_object_in_the_schema_is_closed():
    schema = chart_values_schema()
    open_ = []

    def walk(node, path):  # type: ignore[no-untyped-def]
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                open_.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "")
    assert schema["additionalProperties"] is False
    assert open_ == []
    # every spec section is a chart value and vice versa
    assert set(schema["properties"]) == set(Spec.model_fields)


def _template(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), "template", "t", str(CHART), "--kube-version", "1.36.0", *args],
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize(("args", "needles"), [
    (["--set", "parallelism.nodes=0"], ["/parallelism/nodes", "minimum"]),
    (["--set-string", "parallelism.gpus_per_node=eight"], ["/parallelism/gpus_per_node", "want integer"]),
    (["--set", "parallelism.nodez=2"], ["nodez", "additional properties"]),
    (["--set", "deploy.storage.kind=nfs"], ["/deploy/storage/kind", "hostPath"]),
    (["--set", "bogus=1"], ["bogus"]),
])
def test_schema_rejects_bad_values(args, needles):
    r = _template(*args)
    assert r.returncode != 0
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--set", "parallelism.tp=8"], "tp x pp = 8 x 1 must equal nodes x gpus_per_node = 2 x 8 = 16"),
    (["--set", "parallelism.pp=2"], "must equal nodes x gpus_per_node"),
    (["--set", "serving.frontend=trtllm-serve"], "trtllm-serve needs serving.mode=llmapi"),
    (["--set", "deploy.storage.kind=existingClaim"], "needs deploy.storage.claim_name"),
    (["--set", "launch.model_dir=/elsewhere/hf"], "launch.model_dir=/elsewhere/hf is not under deploy.storage.mount_path"),
    (["--set", "launch.ssh_port=8001"], "launch.ssh_port=8001 collides"),
])
def test_template_guards_fail_with_the_rule(args, needle):
    r = _template(*args)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr


def test_values_render_rejects_what_the_chart_cannot_deploy(write_spec, run_cli, tmp_path):
    p = write_spec({"parallelism": {"nodes": 3, "tp": 16}})
    r = run_cli("render", "--spec", p, "--out", tmp_path / "o")
    assert r.code == 2
    assert "parallelism.tp=16" in r.err and "nodes x gpus_per_node = 24" in r.err
    p = write_spec({"deploy": {"shm_size": "1Gi"}})
    r = run_cli("render", "--spec", p, "--out", tmp_path / "o")
    assert r.code == 2 and "deploy.shm_size=1Gi" in r.err


def test_schema_json_is_what_helm_reads():
    # helm parses the file (a broken schema would make every install fail)
    json.loads((CHART / "values.schema.json").read_text())
    assert _template().returncode == 0
