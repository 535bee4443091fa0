"""`dsv3ctl convert` / `dsv3ctl build-engine` runners against TEST DOUBLES of the TensorRT-LLM tools.

The real convert_checkpoint.py and trtllm-build need the deepseek-branch TensorRT-LLM and SM90 GPUs, so the
tests write stand-ins into tmp: a TEST DOUBLE ``convert_checkpoint.py`` and ``trtllm-build`` (argparse with
exactly the flags of the reference: deepseek branch examples/deepseek_v3 README and convert_checkpoint.py,
so an unknown flag fails like the real tool) that record argv and environment to a JSON-lines file and write
rank files and config.json laid out as the real tools write them; and a TEST DOUBLE ``tensorrt_llm`` package
(``__version__`` and ``models.MODEL_MAP``) on PYTHONPATH for the import probe. Input checkpoints come from
``dsv3ctl weights synth`` (synthetic, real tensor names)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dsv3ctl.adapters import trtllm as T
from dsv3ctl.adapters.synth import write_synthetic

VERSION = "0.17.0.dev2024121700"
GIB = 1024 ** 3

CONVERT_DOUBLE = r'''
"""TEST DOUBLE of the deepseek branch's examples/deepseek_v3/convert_checkpoint.py: its argparse is built
from dsv3ctl/data/contracts/convert_checkpoint.json (the flags read at the pinned commit) with the
capabilities of DSV3CTL_DOUBLE_COMMIT (dsv3ctl/data/trtllm_commits.json), so it rejects what that
commit's converter rejects."""
import json, os, sys
from pathlib import Path
from dsv3ctl.core.contracts import argparser
from dsv3ctl.core.trtllm_pin import lookup
caps = lookup(os.environ.get("DSV3CTL_DOUBLE_COMMIT", "deepseek")).has
a = argparser("convert_checkpoint", caps).parse_args()
with open(os.environ["DSV3CTL_DOUBLE_RECORD"], "a") as f:
    f.write(json.dumps({"tool": "convert", "argv": sys.argv, "env": dict(os.environ)}) + "\n")
assert a.opt_moe_tp_size * a.opt_moe_ep_size == a.opt_tp_size
out = Path(a.opt_output_dir); out.mkdir(parents=True, exist_ok=True)
world = a.opt_tp_size * a.opt_pp_size
fail_after = int(os.environ.get("DSV3CTL_DOUBLE_FAIL_AFTER", "-1"))
print("[TensorRT-LLM] TensorRT-LLM version: test double", flush=True)
for r in range(world):
    if r == fail_after:
        print(f"[rank {r}] killed (test double failure)", flush=True)
        sys.exit(3)
    (out / f"rank{r}.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    print(f"converted rank {r}", flush=True)
tp = a.opt_tp_size + (1 if os.environ.get("DSV3CTL_DOUBLE_BAD_MAPPING") else 0)
(out / "config.json").write_text(json.dumps({"architecture": "DeepseekV3ForCausalLM", "dtype": a.opt_dtype,
    "mapping": {"world_size": world, "gpus_per_node": 8, "cp_size": 1, "tp_size": tp, "pp_size": a.opt_pp_size,
                "moe_tp_size": a.opt_moe_tp_size, "moe_ep_size": a.opt_moe_ep_size}}))
'''

BUILD_DOUBLE = r'''
"""TEST DOUBLE of trtllm-build: its argparse is built from dsv3ctl/data/contracts/trtllm_build.json
(tensorrt_llm/commands/build.py + the plugin flags at the pinned commit, with their value choices)."""
import json, os, sys
from pathlib import Path
from dsv3ctl.core.contracts import argparser
without = tuple(x for x in os.environ.get("DSV3CTL_DOUBLE_WITHOUT", "").split(",") if x)  # an older tool
a = argparser("trtllm_build", prog="trtllm-build", without=without).parse_args()
with open(os.environ["DSV3CTL_DOUBLE_RECORD"], "a") as f:
    f.write(json.dumps({"tool": "build", "argv": sys.argv, "env": dict(os.environ)}) + "\n")
pc = json.loads((Path(a.opt_checkpoint_dir) / "config.json").read_text())
out = Path(a.opt_output_dir); out.mkdir(parents=True, exist_ok=True)
for r in range(pc["mapping"]["world_size"]):
    (out / f"rank{r}.engine").write_bytes(b"engine test double")
    print(f"built rank {r}", flush=True)
bc = {k: getattr(a, "opt_" + k) for k in ("max_batch_size", "max_seq_len", "max_input_len", "max_num_tokens", "max_beam_width")}
(out / "config.json").write_text(json.dumps({"version": "0.17.0", "pretrained_config": pc, "build_config": bc}))
'''


def _flags(argv: list[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[argv[i]] = argv[i + 1]
                i += 2
                continue
            out[argv[i]] = True
        i += 1
    return out


@pytest.fixture(scope="session")
def hf_ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hf") / "DeepSeek-V3"
    write_synthetic(d, shards=2)
    return d


class Tools:
    """The TEST DOUBLE tools in tmp (convert script, trtllm-build on PATH, tensorrt_llm package)."""

    def __init__(self, root: Path, monkeypatch) -> None:
        self.root, self.mp = root, monkeypatch
        root.mkdir(parents=True)
        self.record = root / "record.jsonl"
        self.script = root / "convert_checkpoint.py"
        self.script.write_text(CONVERT_DOUBLE)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        tb = bin_dir / "trtllm-build"
        tb.write_text(f"#!{sys.executable}\n" + BUILD_DOUBLE)
        tb.chmod(0o755)
        self.site = root / "site"
        self.trtllm(deepseek=True)
        monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
        monkeypatch.setenv("PYTHONPATH", str(self.site))
        monkeypatch.setenv("DSV3CTL_DOUBLE_RECORD", str(self.record))
        monkeypatch.delenv("TRTLLM_DISABLE_UNIFIED_CONVERTER", raising=False)
        monkeypatch.setattr(T, "mem_available", lambda: 64 * GIB)
        monkeypatch.setattr(T, "free_disk", lambda p: 1024 * GIB)
        monkeypatch.setattr(T, "gpu_caps", lambda: [("NVIDIA H200", "9.0")] * 8)

    def trtllm(self, deepseek: bool) -> None:
        """Write the TEST DOUBLE tensorrt_llm package (with or without DeepseekV3ForCausalLM)."""
        pkg = self.site / "tensorrt_llm"
        (pkg / "models").mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text(f'"""TEST DOUBLE of tensorrt_llm."""\n__version__ = "{VERSION}"\n')
        names = ["LLaMAForCausalLM", "DeepseekV2ForCausalLM"] + (["DeepseekV3ForCausalLM"] if deepseek else [])
        (pkg / "models" / "__init__.py").write_text(f"MODEL_MAP = {{n: object for n in {names!r}}}\n")

    def calls(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(x) for x in self.record.read_text().splitlines()]


@pytest.fixture
def tools(tmp_path, monkeypatch) -> Tools:
    return Tools(tmp_path / "tools", monkeypatch)


@pytest.fixture
def spec8(write_spec) -> Path:
    return write_spec({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8, "moe_ep": 2},
                       "hardware": {"gpu": "H200"}})


def _convert(run_cli, tools: Tools, src: Path, out: Path, spec: Path, *extra: str):
    return run_cli("convert", src, out, "-f", spec, "--python", sys.executable, "--convert-script", tools.script,
                   *extra)


# --------------------------------------------------------------------------------------------- convert
def test_convert_runs_the_tool_with_every_flag_and_records_the_version(run_cli, tools, hf_ckpt, spec8, tmp_path):
    out = tmp_path / "ckpt"
    r = _convert(run_cli, tools, hf_ckpt, out, spec8)
    assert r.code == 0, r.err + r.out
    (call,) = tools.calls()
    assert call["argv"][0].endswith("convert_checkpoint.py")
    assert _flags(call["argv"]) == {
        "--model_dir": str(hf_ckpt.absolute()), "--output_dir": str(tmp_path / ".ckpt.partial"), "--dtype": "bfloat16",
        "--tp_size": "8", "--pp_size": "1", "--moe_tp_size": "4", "--moe_ep_size": "2", "--workers": "8",
        "--use_fp8_weights": True}
    assert call["env"]["PYTHONUNBUFFERED"] == "1"
    assert sorted(p.name for p in out.glob("rank*.safetensors")) == sorted(f"rank{i}.safetensors" for i in range(8))
    assert not (tmp_path / ".ckpt.partial").exists()
    info = json.loads((out / ".dsv3ctl" / "build-info.json").read_text())
    assert info["tensorrt_llm_version"] == VERSION and info["step"] == "convert" and info["workers"] == 8
    fp = json.loads((out / ".dsv3ctl" / "fingerprint.json").read_text())
    assert fp["tensorrt_llm_version"] == VERSION and len(fp["sha256"]) == 64 and fp["input_sha256"]
    log = (out / ".dsv3ctl" / "convert.log").read_text()
    assert "[TensorRT-LLM] TensorRT-LLM version: test double" in log and "converted rank 7" in log
    assert "[TensorRT-LLM] TensorRT-LLM version: test double" in r.out  # streamed raw (no rich markup eaten)
    assert "progress: 8/8 rank*.safetensors" in log


def test_rerun_with_the_same_fingerprint_is_a_noop_and_a_spec_change_is_not(run_cli, tools, hf_ckpt, spec8, tmp_path,
                                                                           write_spec):
    out = tmp_path / "ckpt"
    assert _convert(run_cli, tools, hf_ckpt, out, spec8).code == 0
    r = _convert(run_cli, tools, hf_ckpt, out, spec8, "-o", "json", "--workers", "3")
    assert r.code == 0, r.err
    assert json.loads(r.out)["skipped"] is True and len(tools.calls()) == 1  # workers do not change the output
    spec_ep4 = write_spec({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8, "moe_ep": 4},
                           "hardware": {"gpu": "H200"}}, "ep4.yaml")
    r = _convert(run_cli, tools, hf_ckpt, out, spec_ep4, "-o", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["skipped"] is False and len(tools.calls()) == 2
    assert json.loads((out / "config.json").read_text())["mapping"]["moe_ep_size"] == 4


def test_invalid_outputs_are_redone_even_with_a_matching_fingerprint(run_cli, tools, hf_ckpt, spec8, tmp_path):
    out = tmp_path / "ckpt"
    assert _convert(run_cli, tools, hf_ckpt, out, spec8).code == 0
    (out / "rank3.safetensors").unlink()
    assert _convert(run_cli, tools, hf_ckpt, out, spec8).code == 0
    assert len(tools.calls()) == 2 and (out / "rank3.safetensors").is_file()


def test_failed_run_keeps_its_log_and_a_rerun_starts_over(run_cli, tools, hf_ckpt, spec8, tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    monkeypatch.setenv("DSV3CTL_DOUBLE_FAIL_AFTER", "3")
    r = _convert(run_cli, tools, hf_ckpt, out, spec8)
    assert r.code == 1 and "exited with status 3" in r.err and "convert.log" in r.err
    part = tmp_path / ".ckpt.partial"
    assert not out.exists() and len(list(part.glob("rank*.safetensors"))) == 3
    assert "killed (test double failure)" in (part / ".dsv3ctl" / "convert.log").read_text()
    monkeypatch.delenv("DSV3CTL_DOUBLE_FAIL_AFTER")
    r = _convert(run_cli, tools, hf_ckpt, out, spec8)
    assert r.code == 0, r.err
    assert not part.exists() and len(list(out.glob("rank*.safetensors"))) == 8
    assert "killed" not in (out / ".dsv3ctl" / "convert.log").read_text()


def test_output_that_does_not_match_the_spec_is_refused(run_cli, tools, hf_ckpt, spec8, tmp_path, monkeypatch):
    monkeypatch.setenv("DSV3CTL_DOUBLE_BAD_MAPPING", "1")
    r = _convert(run_cli, tools, hf_ckpt, tmp_path / "ckpt", spec8)
    assert r.code == 1 and "mapping.tp_size = 9, the spec needs 8" in r.err
    assert not (tmp_path / "ckpt").exists()


def test_refuses_without_deepseek_v3_in_model_map(run_cli, tools, hf_ckpt, spec8, tmp_path):
    tools.trtllm(deepseek=False)
    r = _convert(run_cli, tools, hf_ckpt, tmp_path / "ckpt", spec8)
    assert r.code == 1
    assert "has no DeepseekV3ForCausalLM" in r.err and VERSION in r.err and "engine image" in r.err
    assert tools.calls() == []


def test_refuses_when_tensorrt_llm_is_missing(run_cli, tools, hf_ckpt, spec8, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "empty"))
    r = _convert(run_cli, tools, hf_ckpt, tmp_path / "ckpt", spec8)
    assert r.code == 1 and "tensorrt_llm is not importable" in r.err and "ModuleNotFoundError" in r.err
    assert tools.calls() == []


def test_too_little_memory_refuses_and_some_memory_caps_workers(run_cli, tools, hf_ckpt, spec8, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "mem_available", lambda: 1 * GIB)
    r = _convert(run_cli, tools, hf_ckpt, tmp_path / "ckpt", spec8)
    assert r.code == 1 and "[memory]" in r.err and "1.0 GiB available" in r.err and tools.calls() == []
    monkeypatch.setattr(T, "mem_available", lambda: 5 * GIB)  # about 2 GiB per worker -> 2 workers
    r = _convert(run_cli, tools, hf_ckpt, tmp_path / "ckpt", spec8)
    assert r.code == 0, r.err
    assert "workers capped from 8 to 2" in r.out and _flags(tools.calls()[0]["argv"])["--workers"] == "2"


def test_too_little_disk_refuses(run_cli, tools, hf_ckpt, spec8, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "free_disk", lambda p: 100 * 1024 * 1024)
    r = _convert(run_cli, tools, hf_ckpt, tmp_path / "ckpt", spec8)
    assert r.code == 1 and "[disk]" in r.err and "0.1 GiB free" in r.err and tools.calls() == []


def test_unverified_checkpoint_refuses(run_cli, tools, hf_ckpt, spec8, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(hf_ckpt, bad)
    shard = sorted(bad.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    r = _convert(run_cli, tools, bad, tmp_path / "ckpt", spec8)
    assert r.code == 1 and "[checkpoint]" in r.err and "does not verify" in r.err and "weights verify" in r.err
    assert tools.calls() == []


def test_precision_mismatch_is_a_spec_error(run_cli, tools, hf_ckpt, write_spec, tmp_path):
    spec = write_spec({"model": {"precision": "bf16"}, "parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}})
    r = _convert(run_cli, tools, hf_ckpt, tmp_path / "ckpt", spec)
    assert r.code == 2 and "model.precision=bf16" in r.err and "cast-bf16" in r.err


def test_refuses_to_replace_a_directory_it_did_not_write(run_cli, tools, hf_ckpt, spec8, tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    r = _convert(run_cli, tools, hf_ckpt, out, spec8)
    assert r.code == 1 and "--force" in r.err and (out / "precious.txt").exists()
    assert _convert(run_cli, tools, hf_ckpt, out, spec8, "--force").code == 0
    assert not (out / "precious.txt").exists()


def test_dry_run_prints_the_exact_command_and_changes_nothing(run_cli, tools, hf_ckpt, spec8, tmp_path):
    out = tmp_path / "ckpt"
    r = _convert(run_cli, tools, hf_ckpt, out, spec8, "--dry-run", "-o", "json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["argv"] == [sys.executable, str(tools.script), "--model_dir", str(hf_ckpt.absolute()), "--output_dir",
                            str(tmp_path / ".ckpt.partial"), "--dtype", "bfloat16", "--tp_size", "8", "--pp_size",
                            "1", "--moe_tp_size", "4", "--moe_ep_size", "2", "--workers", "8", "--use_fp8_weights"]
    assert data["renames_to"] == str(out) and not out.exists() and tools.calls() == []
    r = _convert(run_cli, tools, hf_ckpt, out, spec8, "--dry-run")
    assert r.code == 0 and "--use_fp8_weights" in r.out and "warning" not in r.out


# --------------------------------------------------------------------------------------------- llmapi
def test_llmapi_mode_needs_no_conversion_and_writes_the_extra_options(run_cli, tools, hf_ckpt, write_spec, tmp_path):
    from dsv3ctl.core.spec import load_spec
    from dsv3ctl.render.model_repo import EXTRA_OPTIONS_FILE, llmapi_files

    spec = write_spec({"serving": {"mode": "llmapi"}})
    out = tmp_path / "opts"
    r = run_cli("convert", hf_ckpt, out, "-f", spec, "-o", "json")
    assert r.code == 0, r.err
    assert "no conversion is needed" in r.err and json.loads(r.out)["converted"] is False
    assert (out / EXTRA_OPTIONS_FILE).read_text() == llmapi_files(load_spec(spec), str(hf_ckpt))[EXTRA_OPTIONS_FILE]
    assert tools.calls() == []
    r = run_cli("build-engine", out, tmp_path / "eng", "-f", spec)
    assert r.code == 2 and "serving.mode=llmapi" in r.err


# --------------------------------------------------------------------------------------------- build-engine
def test_build_engine_runs_trtllm_build_with_every_flag(run_cli, tools, hf_ckpt, spec8, tmp_path):
    ckpt, eng = tmp_path / "ckpt", tmp_path / "eng"
    assert _convert(run_cli, tools, hf_ckpt, ckpt, spec8).code == 0
    r = run_cli("build-engine", ckpt, eng, "-f", spec8, "--python", sys.executable, "-o", "json")
    assert r.code == 0, r.err
    call = tools.calls()[-1]
    assert call["tool"] == "build" and call["argv"][0].endswith("trtllm-build")
    assert _flags(call["argv"]) == {
        "--checkpoint_dir": str(ckpt), "--output_dir": str(tmp_path / ".eng.partial"), "--max_batch_size": "4",
        "--max_seq_len": "4096", "--max_input_len": "2048", "--max_num_tokens": "8192", "--max_beam_width": "1",
        "--use_paged_context_fmha": "enable", "--workers": "8"}
    assert len(list(eng.glob("rank*.engine"))) == 8
    assert json.loads((eng / ".dsv3ctl" / "build-info.json").read_text())["tensorrt_llm_version"] == VERSION
    assert "progress: 8/8 rank*.engine" in r.err  # JSON mode: logs on stderr, one document on stdout
    assert json.loads(r.out)["skipped"] is False
    r = run_cli("build-engine", ckpt, eng, "-f", spec8, "--python", sys.executable, "-o", "json")
    assert json.loads(r.out)["skipped"] is True and len(tools.calls()) == 2
    # the engine directory passes `repo check`'s engine rules too (config.json + rank files)
    from dsv3ctl.adapters.model_repo import _check_engine

    notes: list[str] = []
    assert _check_engine(eng, {}, notes) == []
    assert any(f"built by TensorRT-LLM {VERSION}" in n for n in notes)


def test_build_engine_bf16_adds_the_plugins_and_caps_workers_by_gpus(run_cli, tools, hf_ckpt, write_spec, tmp_path,
                                                                     monkeypatch):
    spec = write_spec({"model": {"precision": "bf16"}, "parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8},
                       "hardware": {"gpu": "H200"}})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"architecture": "DeepseekV3ForCausalLM", "mapping": {
        "world_size": 8, "tp_size": 8, "pp_size": 1, "moe_tp_size": 8, "moe_ep_size": 1}}))
    for i in range(8):
        (ckpt / f"rank{i}.safetensors").write_bytes(b"x" * 16)
    monkeypatch.setattr(T, "gpu_caps", lambda: [("NVIDIA H200", "9.0")] * 4)
    r = run_cli("build-engine", ckpt, tmp_path / "eng", "-f", spec, "--python", sys.executable, "--dry-run", "-o", "json")
    assert r.code == 0, r.err
    f = _flags(json.loads(r.out)["argv"])
    assert f["--gpt_attention_plugin"] == "bfloat16" and f["--gemm_plugin"] == "bfloat16" and f["--workers"] == "4"


def test_build_engine_refusals(run_cli, tools, hf_ckpt, spec8, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    r = run_cli("build-engine", ckpt, tmp_path / "eng", "-f", spec8, "--python", sys.executable)
    assert r.code == 1 and "not a TensorRT-LLM checkpoint for this spec" in r.err and "dsv3ctl convert" in r.err
    assert _convert(run_cli, tools, hf_ckpt, ckpt, spec8).code == 0
    monkeypatch.setattr(T, "gpu_caps", lambda: [("NVIDIA A100-SXM4-80GB", "8.0")] * 8)
    r = run_cli("build-engine", ckpt, tmp_path / "eng", "-f", spec8, "--python", sys.executable)
    assert r.code == 1 and "needs SM90" in r.err and "sm 8.0" in r.err
    monkeypatch.setattr(T, "gpu_caps", lambda: [("NVIDIA H200", "9.0")] * 8)
    r = run_cli("build-engine", ckpt, tmp_path / "eng", "-f", spec8, "--python", sys.executable,
                "--trtllm-build", "no-such-trtllm-build")
    assert r.code == 1 and "no-such-trtllm-build: not found" in r.err
    assert [c["tool"] for c in tools.calls()] == ["convert"]


def test_cli_import_stays_light():
    import subprocess

    code = ("import sys, dsv3ctl.cli, dsv3ctl.cli.convert; "
            "print([m for m in ('numpy', 'torch', 'dsv3ctl.adapters.trtllm') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ capability probes
def test_convert_refuses_a_converter_without_use_fp8_weights_before_it_starts(run_cli, tools, hf_ckpt, spec8,
                                                                              tmp_path, monkeypatch):
    """The stand-in converter of the 0321f71e pin (its argparse from the contract data) has no
    --use_fp8_weights: convert asks its --help first and refuses (exit 2) without running a conversion."""
    monkeypatch.setenv("DSV3CTL_DOUBLE_COMMIT", "0321f71e9559906096211de557d0db52d840615a")
    stamp = tmp_path / "TRTLLM_COMMIT"
    stamp.write_text("0321f71e9559906096211de557d0db52d840615a\n")
    monkeypatch.setenv(T.COMMIT_FILE_ENV, str(stamp))
    r = _convert(run_cli, tools, hf_ckpt, tmp_path / "ckpt", spec8)
    msg = r.err + r.out
    assert r.code == 2, msg
    assert "--use_fp8_weights" in msg and VERSION in msg and "0321f71e9559" in msg and "image.trtllm_commit" in msg
    assert tools.calls() == [] and not (tmp_path / "ckpt").exists()


def test_convert_with_the_fp8_pin_passes_the_probe(run_cli, tools, hf_ckpt, spec8, tmp_path, monkeypatch):
    monkeypatch.setenv("DSV3CTL_DOUBLE_COMMIT", "deepseek")
    r = _convert(run_cli, tools, hf_ckpt, tmp_path / "ckpt", spec8)
    assert r.code == 0, r.err + r.out
    assert "--use_fp8_weights" in tools.calls()[0]["argv"]


def test_build_engine_refuses_a_trtllm_build_without_a_flag(run_cli, tools, hf_ckpt, spec8, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    assert _convert(run_cli, tools, hf_ckpt, ckpt, spec8).code == 0
    monkeypatch.setenv("DSV3CTL_DOUBLE_WITHOUT", "--max_num_tokens")
    r = run_cli("build-engine", ckpt, tmp_path / "eng", "-f", spec8, "--python", sys.executable)
    assert r.code == 2, r.err + r.out
    assert "--max_num_tokens" in r.err + r.out and "trtllm-build" in r.err + r.out
    assert [c for c in tools.calls() if c["tool"] == "build"] == []


def test_probe_that_cannot_run_is_a_runtime_failure(tmp_path):
    from dsv3ctl.adapters.probe import read_help

    assert read_help([str(tmp_path / "nope"), "--help"]).error
    quiet = tmp_path / "quiet"
    quiet.write_text("#!/bin/sh\nexit 0\n")
    quiet.chmod(0o755)
    assert "listed no flags" in read_help([str(quiet), "--help"]).error
def test_dry_run_strict_fails_on_the_errors_it_prints(run_cli, tools, spec8, tmp_path):
    missing = tmp_path / "no-ckpt"
    args = ("build-engine", missing, tmp_path / "eng", "-f", spec8, "--python", sys.executable, "--dry-run")
    r = run_cli(*args)
    assert r.code == 0 and "# error" in r.out, r.out + r.err  # a dry run reports, and exits 0
    r = run_cli(*args, "--strict")
    assert r.code in (1, 2) and "# error" in r.out, r.out + r.err
    assert "not a TensorRT-LLM checkpoint for this spec" in r.err and "Traceback" not in r.err
