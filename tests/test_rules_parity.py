"""One home for rules: ``dsv3ctl plan`` refuses every spec that ``render`` (dsv3ctl/render/values.py) or the
chart's ``dsv3.validate`` guard (helm/dsv3/templates/_helpers.tpl, run by the pinned helm) refuses.

Generated specs vary the keys those rules read: the layout, the serving mode and frontend, /dev/shm against
the launcher's minimum, the storage kind and claim name, the launch paths against the mount path, and the
pod's ports. For each: render refuses => plan has a failed check; the chart (fed the unchecked values)
refuses => plan has a failed check; and plan's failed checks that are deploy rules make render refuse too.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from chart_tools import CHART, tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dsv3ctl.adapters import helm as helm_adapter
from dsv3ctl.core.planner import make_plan
from dsv3ctl.core.spec import Spec
from dsv3ctl.errors import SpecError
from dsv3ctl.render.values import render_values, values_yaml

#: planner checks that are rules of the chart (not the memory fit or the converter's shapes)
DEPLOY_RULES = {"world_size", "tp_divides_heads", "moe_ep_divides_tp", "moe_ep_divides_experts", "engine_pp",
                "storage", "storage_claim_name", "shm_size", "launch_paths", "frontend_mode", "ports"}

#: (section, key path, value) changes of the default spec; each example applies up to three
_CHANGES = [
    ("parallelism", {"nodes": 1, "tp": 8, "moe_ep": 8}), ("parallelism", {"nodes": 1, "tp": 8}),
    ("parallelism", {"nodes": 3, "tp": 24}), ("parallelism", {"tp": 12}), ("parallelism", {"moe_ep": 16}),
    ("parallelism", {"moe_ep": 3}), ("parallelism", {"pp": 2, "tp": 8}), ("parallelism", {"gpus_per_node": 4, "nodes": 4}),
    ("serving", {"mode": "llmapi"}), ("serving", {"frontend": "trtllm-serve"}),
    ("launch", {"shm_min_gib": 16.0}), ("launch", {"shm_min_gib": 0.0}), ("launch", {"ssh_port": 8001}),
    ("launch", {"ssh_port": 8080}), ("launch", {"http_port": 8001}), ("launch", {"http_port": 9000}),
    ("launch", {"model_dir": "/data/hf"}), ("launch", {"model_dir": ""}),
    ("launch", {"model_repository": "/elsewhere/repo"}),
    ("deploy", {"shm_size": "1Gi"}), ("deploy", {"shm_size": "16Gi"}), ("deploy", {"openai_port": 8000}),
    ("deploy", {"openai_port": 9000}),
    ("storage", {"kind": "existingClaim"}), ("storage", {"kind": "existingClaim", "claim_name": "weights"}),
    ("storage", {"kind": "newClaim"}), ("storage", {"kind": "newClaim", "access_modes": ["ReadWriteOnce"]}),
    ("storage", {"mount_path": "/data"}),
]


def _build(changes: list[tuple[str, dict]]) -> dict:
    data: dict = {"parallelism": {}, "serving": {}, "launch": {}, "deploy": {"storage": {}}}
    for section, kv in changes:
        (data["deploy"]["storage"] if section == "storage" else data[section]).update(kv)
    return data


specs = st.lists(st.sampled_from(_CHANGES), max_size=3).map(_build)


def _spec(data: dict) -> Spec | None:
    try:
        return Spec.model_validate(data)
    except ValidationError:
        return None  # `plan` exits 2 on it as well (the spec does not load)


def _chart_refuses(spec: Spec, tmp_path, helm: str) -> bool | None:
    """True when ``helm template`` fails on the unchecked values; None when the values cannot be computed
    (a layout whose memory cannot be sized: the planner refuses it, checked separately)."""
    try:
        values = render_values(spec, check=False)
    except (ValueError, ZeroDivisionError, KeyError, StopIteration):
        return None
    f = tmp_path / "values.yaml"
    f.write_text(values_yaml(values))
    r = subprocess.run([helm, "template", "t", str(CHART), "-f", str(f), "--api-versions",
                        helm_adapter.LWS_API_VERSION], capture_output=True, text=True, timeout=60)
    return r.returncode != 0


@pytest.fixture(scope="module")
def helm() -> str:
    return tool("helm")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=specs)
def test_plan_refuses_what_render_or_the_chart_refuses(data, tmp_path, helm):
    spec = _spec(data)
    if spec is None:
        return
    plan = make_plan(spec)
    failed = {c.name for c in plan.errors}
    try:
        render_values(spec)
        render_ok = True
    except SpecError:
        render_ok = False
    if not render_ok:
        assert failed, f"render refuses but plan passes: {yaml.safe_dump(data)}"
    if failed & DEPLOY_RULES:
        assert not render_ok, f"plan fails {failed & DEPLOY_RULES} but render accepts: {yaml.safe_dump(data)}"
    chart = _chart_refuses(spec, tmp_path, helm)
    if chart:
        assert failed, f"the chart refuses but plan passes: {yaml.safe_dump(data)}"
    if render_ok:
        assert chart is False, f"render accepts but the chart refuses: {yaml.safe_dump(data)}"


@pytest.mark.parametrize(("change", "check"), [
    ({"launch": {"ssh_port": 8001}}, "ports"),
    ({"deploy": {"shm_size": "1Gi"}}, "shm_size"),
    ({"serving": {"frontend": "trtllm-serve"}}, "frontend_mode"),
    ({"deploy": {"storage": {"kind": "existingClaim"}}}, "storage_claim_name"),
    ({"launch": {"model_dir": "/elsewhere/hf"}}, "launch_paths"),
])
def test_each_chart_guard_is_a_plan_check_with_a_verified_fix(change, check, run_cli, write_spec):
    """The spec errors the chart guards (``helm template`` fails, exit 1 through helm) exit 2 from ``plan``
    with the check's name and a fix that passes."""
    r = run_cli("plan", "--spec", write_spec(change))
    assert r.code == 2, r.out
    assert f"FAIL {check}:" in r.out and "; use " in r.out, r.out
    r = run_cli("render", "--spec", write_spec(change), "--out", "unused")
    assert r.code == 2, r.err
