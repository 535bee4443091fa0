"""Contract data (dsv3ctl/data/contracts/*.json): every flag/key dsv3ctl emits to TensorRT-LLM, Triton and
the tensorrtllm backend is in the data read from their source; the known-commit table and the plan check
built on it; the stand-in argparse built from the data rejects what the real tool rejects."""

from __future__ import annotations

import itertools

import pytest

from dsv3ctl.adapters.probe import emitted_flags
from dsv3ctl.core import contracts, trtllm_pin
from dsv3ctl.core.planner import make_plan
from dsv3ctl.core.spec import Spec
from dsv3ctl.render import launch as L
from dsv3ctl.render import model_repo as MR
from dsv3ctl.render.trtllm import build_argv, convert_argv


def _spec(**over) -> Spec:
    d: dict = {"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8, "moe_ep": 2}, "hardware": {"gpu": "H200"}}
    for k, v in over.items():
        d.setdefault(k, {}).update(v)
    return Spec.model_validate(d)


def test_every_contract_has_provenance_and_lines():
    assert set(contracts.names()) >= {"convert_checkpoint", "trtllm_build", "tritonserver", "trtllm_serve", "run_py",
                                      "backend_tensorrt_llm"}
    for n in contracts.names():
        c = contracts.load(n)
        assert c.source.get("repo") and c.source.get("file") and c.source.get("commit"), n
        # a full SHA, or "unresolved" with a note saying what was read and why no commit could be named
        assert len(c.source["commit"]) == 40 or (c.source["commit"] == "unresolved" and c.source.get("note")), n
        for key, it in c.items.items():
            # a line number, or (read where none was available) the text the item was read from
            assert it.line or it.extra.get("anchor") or it.extra.get("evidence"), (n, key)


@pytest.mark.parametrize("prec", ["fp8", "bf16", "fp16"])
def test_convert_and_build_flags_are_in_the_contract(prec):
    s = _spec(model={"precision": prec})
    conv = contracts.load("convert_checkpoint")
    assert conv.missing(emitted_flags(convert_argv(s, "/m", "/o", 8))) == []
    assert contracts.load("trtllm_build").missing(emitted_flags(build_argv(s, "/c", "/e", 8))) == []


def test_convert_argv_values_parse_with_the_stand_in_of_the_default_pin():
    """The default spec's convert command parses with the argparse of the default pin's capabilities."""
    s = Spec.model_validate({})
    caps = trtllm_pin.lookup(s.image.trtllm_commit).has
    argv = convert_argv(s, "/m", "/o", 8)
    a = contracts.argparser("convert_checkpoint", caps).parse_args(argv[2:])
    assert a.opt_use_fp8_weights and a.opt_dtype == "bfloat16" and a.opt_tp_size == s.parallelism.tp


def test_the_old_pin_rejects_fp8_like_its_converter():
    old = trtllm_pin.lookup("0321f71e")
    assert old and "fp8" in old.lacks
    argv = convert_argv(Spec.model_validate({}), "/m", "/o", 8)
    with pytest.raises(SystemExit):
        contracts.argparser("convert_checkpoint", old.has).parse_args(argv[2:])


def test_stand_in_rejects_values_outside_choices():
    p = contracts.argparser("trtllm_build")
    with pytest.raises(SystemExit):
        p.parse_args(["--checkpoint_dir", "c", "--use_paged_context_fmha", "yes"])
    with pytest.raises(SystemExit):
        contracts.argparser("tritonserver").parse_args(["--model-control-mode=lazy"])


@pytest.mark.parametrize("frontend", ["tritonserver", "trtllm-serve"])
def test_server_flags_are_in_the_contract(frontend):
    tri = contracts.load("tritonserver")
    cfg = L.RankConfig(mode="engine", tp=16)
    for rank in (0, 1):
        assert tri.missing(emitted_flags(L.engine_rank_argv(cfg, rank)[1:])) == []
    lcfg = L.RankConfig(mode="llmapi", frontend=frontend, tp=16, extra_llm_api_options="/x.yaml")
    argv = L.llmapi_rank_argv(lcfg, 0)[1:]  # after trtllm-llmapi-launch
    name = "tritonserver" if frontend == "tritonserver" else "trtllm_serve"
    assert contracts.load(name).missing(emitted_flags(argv)) == []
    pos = ("model",) if frontend == "trtllm-serve" else ()
    contracts.argparser(name, positionals=pos).parse_args(argv[1:])  # values parse too


def test_backend_parameters_in_the_rendered_config_are_in_the_contract():
    info = MR.EngineInfo(max_batch_size=4, max_input_len=2048, max_seq_len=4096, max_beam_width=1, world_size=8,
                         tp_size=8, pp_size=1, dtype="bfloat16", logits_dtype="float32", placeholder=False)
    llm = MR.engine_configs(_spec(), info)["tensorrt_llm"]
    c = contracts.load("backend_tensorrt_llm")
    keys = list(llm.parameters.keys())
    assert keys and c.missing(keys) == []
    for k in keys:
        ch = c.items[k].choices
        if ch is not None:
            assert llm.parameters[k].string_value in ch, k


def test_missing_reports_an_unknown_flag():
    assert contracts.load("trtllm_build").missing(["--max_batch_size", "--no_such_flag"]) == ["--no_such_flag"]


# ------------------------------------------------------------------------------ pinned commit -> plan
def test_default_pin_converts_fp8_and_plan_passes_that_check():
    s = Spec.model_validate({})
    assert s.image.trtllm_commit == trtllm_pin.DEFAULT_REF
    c = next(c for c in make_plan(s).checks if c.name == "trtllm_commit_capability")
    assert c.ok


@pytest.mark.parametrize("commit", ["0321f71e9559906096211de557d0db52d840615a", "0321f71e", "130232d9e775"])
def test_plan_refuses_fp8_engine_mode_on_a_commit_without_fp8(commit):
    s = Spec.model_validate({"image": {"trtllm_commit": commit}})
    c = next(c for c in make_plan(s).checks if c.name == "trtllm_commit_capability")
    assert not c.ok and "image.trtllm_commit" in c.message and "image.trtllm_commit: deepseek" in c.message
    fixed = Spec.model_validate({"image": {"trtllm_commit": "deepseek"}})  # the suggested fix passes
    assert next(c for c in make_plan(fixed).checks if c.name == "trtllm_commit_capability").ok
    bf16 = Spec.model_validate({"image": {"trtllm_commit": commit}, "model": {"precision": "bf16"}})
    assert next(c for c in make_plan(bf16).checks if c.name == "trtllm_commit_capability").ok


def test_llmapi_mode_and_unknown_commits():
    s = Spec.model_validate({"image": {"trtllm_commit": "0321f71e"}, "serving": {"mode": "llmapi"}})
    assert not [c for c in make_plan(s).checks if c.name == "trtllm_commit_capability"]
    u = Spec.model_validate({"image": {"trtllm_commit": "abcdef1234567"}})
    c = next(c for c in make_plan(u).checks if c.name == "trtllm_commit_capability")
    assert c.ok and c.severity == "warning"


def test_plan_cli_exits_2_naming_the_field(run_cli, write_spec):
    r = run_cli("plan", "-f", write_spec({"image": {"trtllm_commit": "0321f71e9559906096211de557d0db52d840615a"}}))
    assert r.code == 2 and "image.trtllm_commit" in (r.out + r.err)


def test_every_known_commit_row_is_consistent():
    names = set(trtllm_pin.capability_names())
    for key in ("0321f71e9559906096211de557d0db52d840615a", "130232d9e775ed7995914d2acca35b0c73a94e6f", "deepseek"):
        k = trtllm_pin.lookup(key)
        assert k and k.provenance and k.has <= names and k.lacks <= names and not (k.has & k.lacks)
    for prec, mode in itertools.product(("fp8", "bf16", "fp16"), ("engine", "llmapi")):
        assert trtllm_pin.needs(prec, mode) <= names


# ------------------------------------------------------------------------------ launcher's server probe
TRITON_DOUBLE = '''#!{python}
"""TEST DOUBLE of tritonserver: option parser from dsv3ctl/data/contracts/tritonserver.json (minus
DSV3CTL_DOUBLE_WITHOUT, an older server); prints its --help like the real one and exits."""
import os
from dsv3ctl.core.contracts import argparser
without = tuple(x for x in os.environ.get("DSV3CTL_DOUBLE_WITHOUT", "").split(",") if x)
argparser("tritonserver", prog="tritonserver", without=without).parse_args()
'''
SERVE_DOUBLE = '''#!{python}
"""TEST DOUBLE of trtllm-serve: click options of `serve` from dsv3ctl/data/contracts/trtllm_serve.json."""
import sys
from dsv3ctl.core.contracts import argparser
args = sys.argv[1:]
if args[:1] == ["serve"]:
    args = args[1:]
argparser("trtllm_serve", positionals=("model",), prog="trtllm-serve serve").parse_args(args)
'''


def _exe(tmp_path, name: str, text: str) -> str:
    import sys

    p = tmp_path / name
    p.write_text(text.format(python=sys.executable))
    p.chmod(0o755)
    return str(p)


def test_launcher_probe_accepts_the_contract_server(tmp_path):
    from dsv3ctl.adapters.launcher import check_server_flags

    tri = _exe(tmp_path, "tritonserver", TRITON_DOUBLE)
    check_server_flags(L.RankConfig(mode="engine", tp=16, tritonserver=tri))
    check_server_flags(L.RankConfig(mode="llmapi", tp=16, tritonserver=tri))
    serve = _exe(tmp_path, "trtllm-serve", SERVE_DOUBLE)
    check_server_flags(L.RankConfig(mode="llmapi", frontend="trtllm-serve", tp=16, trtllm_serve=serve,
                                    extra_llm_api_options="/x.yaml"))


def test_launcher_probe_refuses_a_server_without_a_flag(tmp_path, monkeypatch):
    from dsv3ctl.adapters.launcher import check_server_flags
    from dsv3ctl.errors import RuntimeFailure, SpecError

    tri = _exe(tmp_path, "tritonserver", TRITON_DOUBLE)
    monkeypatch.setenv("DSV3CTL_DOUBLE_WITHOUT", "--load-model")
    with pytest.raises(SpecError, match="--load-model"):  # only the non-zero ranks pass it
        check_server_flags(L.RankConfig(mode="engine", tp=16, tritonserver=tri))
    with pytest.raises(RuntimeFailure):
        check_server_flags(L.RankConfig(mode="engine", tp=16, tritonserver=str(tmp_path / "missing")))


def test_engine_skeleton_claims_fp8_format_only_where_the_source_was_read():
    from dsv3ctl.render.engine_skeleton import engine_config

    assert "fp8_format" not in engine_config(Spec.model_validate({}))["pretrained_config"]  # branch: not read
    old = Spec.model_validate({"image": {"trtllm_commit": "0321f71e"}, "model": {"precision": "bf16"}})
    assert engine_config(old)["pretrained_config"]["fp8_format"] is False  # config.py:168 @ 0321f71e


def test_smoke_llmapi_call_uses_fields_of_the_llm_api_contracts():
    """The llmapi smoke call's LLM(...) keywords and SamplingParams(...) fields are in the LLM API contract
    files (llm_args.json, sampling_params.json) when they are shipped."""
    import re

    from dsv3ctl.render import smoke as S

    have = set(contracts.names())
    if not {"llm_args", "sampling_params"} <= have:
        pytest.skip("the LLM API contract files (llm_args.json, sampling_params.json) are not in this tree")
    prog = S._LLMAPI_PROGRAM
    llm_kw = re.findall(r"(\w+)=a\[", prog.split("SamplingParams(")[0].split("LLM(")[1])
    sp_kw = re.findall(r"(\w+)=a\[", prog.split("SamplingParams(")[1])
    assert contracts.load("llm_args").missing(llm_kw) == []
    assert contracts.load("sampling_params").missing(sp_kw) == []
