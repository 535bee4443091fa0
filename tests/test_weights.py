"""Tests of the weights pipeline: inventory, verify, FP8 -> BF16 cast exactness, resume after kill -9,
bounded memory, download planning. Everything runs on local synthetic checkpoints (the hub is not reachable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from dsv3ctl.adapters.cast import cast_checkpoint
from dsv3ctl.adapters.synth import write_synthetic
from dsv3ctl.core.checkpoint import (
    INDEX_NAME,
    RemoteFile,
    encode_header,
    expected_inventory,
    plan_download,
    verify_checkpoint,
)
from dsv3ctl.core.model import DeepSeekV3Config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def synth(tmp_path):
    d = tmp_path / "fp8"
    write_synthetic(d, shards=4, seed=3)
    return d


def _load_all(d: Path) -> dict[str, np.ndarray]:
    """Test-side safetensors reader, independent of dsv3ctl's parser: F8 -> uint8, BF16 -> uint16 bits."""
    import struct

    kinds = {"F8_E4M3": np.uint8, "BF16": np.uint16, "F32": np.float32, "F16": np.float16}
    out: dict[str, np.ndarray] = {}
    for f in sorted(d.glob("*.safetensors")):
        raw = f.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        head = json.loads(raw[8:8 + n])
        head.pop("__metadata__", None)
        for name, e in head.items():
            a, b = e["data_offsets"]
            out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], kinds[e["dtype"]]).reshape(e["shape"])
            out[name].flags.writeable = False
            out[name + "#dtype"] = np.array(e["dtype"])
    return out


def _reference_bf16(w_u8: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Independent reference (reference doc 5.4): W.float() * S.repeat_interleave(128,0)[:M].repeat_interleave(128,1)[:,:N] -> bf16 (RNE)."""
    m, n = w_u8.shape
    w = w_u8.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    ex = np.repeat(np.repeat(s, 128, axis=0)[:m], 128, axis=1)[:, :n]
    return (w * ex).astype(ml_dtypes.bfloat16).view(np.uint16)


def test_full_release_inventory_matches_published_facts():
    inv = expected_inventory(DeepSeekV3Config.default(), "fp8")
    assert len(inv) == 91_991
    assert inv["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (5, 56)
    assert inv["model.layers.61.mlp.experts.255.down_proj.weight"].dtype == "F8_E4M3"
    assert inv["model.layers.3.mlp.gate.e_score_correction_bias"].dtype == "F32"


def test_synthetic_checkpoint_verifies_and_is_labelled(synth, run_cli):
    cfg = json.loads((synth / "config.json").read_text())
    assert cfg["_dsv3ctl_synthetic"] is True and "SYNTHETIC" in (synth / "README.md").read_text()
    idx = json.loads((synth / INDEX_NAME).read_text())["weight_map"]
    cross = [n for n in idx if n.endswith("_scale_inv") and idx[n] != idx[n[: -len("_scale_inv")]]]
    assert cross, "the synthetic checkpoint must put some scales in another shard"
    r = run_cli("weights", "verify", synth, "-o", "json")
    assert r.code == 0, r.out + r.err
    rep = json.loads(r.out)
    assert rep["ok"] and rep["found_tensors"] == rep["expected_tensors"] == 213 and rep["precision"] == "fp8"
    # the writer and the verifier share DeepSeekV3Config.tensors(): check the names against a list derived
    # from the synthetic config.json alone (tests/test_model.py::independent_v3_names)
    from test_model import independent_v3_names

    assert set(idx) == independent_v3_names(cfg)


def test_verify_reports_missing_extra_malformed_and_truncated(synth, run_cli):
    idx_p = synth / INDEX_NAME
    doc = json.loads(idx_p.read_text())
    # an extra shard with one unexpected tensor and one wrong-shaped expected tensor
    header, _ = encode_header([("model.layers.0.bogus.weight", "BF16", (4,)),
                               ("model.layers.1.self_attn.q_a_layernorm.weight", "BF16", (3,))], {"format": "pt"})
    (synth / "extra.safetensors").write_bytes(header + b"\0" * 14)
    wm = doc["weight_map"]
    moved = "model.layers.1.self_attn.q_a_layernorm.weight"
    old_shard = wm[moved]
    wm["model.layers.0.bogus.weight"] = "extra.safetensors"
    wm[moved] = "extra.safetensors"
    dropped = "model.layers.2.mlp.experts.3.up_proj.weight_scale_inv"
    del wm[dropped]
    idx_p.write_text(json.dumps(doc))
    # truncate another shard
    shards = sorted(synth.glob("model-*.safetensors"))
    victim = shards[-1]
    victim.write_bytes(victim.read_bytes()[:-10])
    rep = verify_checkpoint(synth)
    assert not rep.ok
    assert rep.extra == ["model.layers.0.bogus.weight"]
    assert any(moved in m and "BF16[3]" in m for m in rep.malformed)
    assert any(dropped in p for p in rep.index_problems)  # in a header but not indexed
    assert any(old_shard in p and moved in p for p in rep.index_problems)
    assert any(victim.name in p and "truncated" in p for p in rep.shard_problems)
    r = run_cli("weights", "verify", synth)
    assert r.code == 1 and "model.layers.0.bogus.weight" in r.out


def test_verify_reports_missing_tensor(synth):
    idx_p = synth / INDEX_NAME
    doc = json.loads(idx_p.read_text())
    # rewrite the shard holding lm_head without it
    shard = doc["weight_map"].pop("lm_head.weight")
    from safetensors.numpy import load_file, save_file

    d = load_file(str(synth / shard))
    d.pop("lm_head.weight")
    save_file(d, str(synth / shard), metadata={"format": "pt"})
    doc["metadata"].pop("total_size")
    idx_p.write_text(json.dumps(doc))
    rep = verify_checkpoint(synth)
    assert rep.missing == ["lm_head.weight"]
    assert any("total_size" in w for w in rep.warnings)


def test_cast_is_bit_exact_against_independent_reference(synth, tmp_path, run_cli):
    dst = tmp_path / "bf16"
    r = run_cli("weights", "cast-bf16", synth, dst, "--device", "cpu", "--workers", "2", "-o", "json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["verify"]["ok"] and res["shards_done"] == 4
    src, out = _load_all(synth), _load_all(dst)
    n_cast = n_edge = 0
    for name, arr in src.items():
        if name.endswith("#dtype"):
            continue
        if name.endswith("_scale_inv"):
            assert name not in out
            continue
        if str(src[name + "#dtype"]) == "F8_E4M3":
            assert str(out[name + "#dtype"]) == "BF16"
            ref = _reference_bf16(arr, src[name + "_scale_inv"])
            assert np.array_equal(out[name], ref), name
            n_cast += 1
            n_edge += arr.shape[0] % 128 != 0 or arr.shape[1] % 128 != 0
        else:
            assert out[name].tobytes() == arr.tobytes() and str(out[name + "#dtype"]) == str(src[name + "#dtype"])
    assert n_cast > 50 and n_edge > 20
    from safetensors import safe_open

    for f in dst.glob("*.safetensors"):
        with safe_open(str(f), "np") as h:
            assert h.metadata() == {"format": "pt"}
    idx = json.loads((dst / INDEX_NAME).read_text())
    assert idx["metadata"]["total_size"] == sum(a.nbytes for k, a in out.items() if not k.endswith("#dtype"))
    assert not any(k.endswith("_scale_inv") for k in idx["weight_map"])
    cfg = json.loads((dst / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["torch_dtype"] == "bfloat16"
    assert (dst / "README.md").read_text() == (synth / "README.md").read_text()


def test_cast_known_values_round_to_nearest_even(synth, tmp_path):
    """Hand-checked values: fp8 0x38 = 1.0, 0x40 = 2.0; 1.0 x (1 + 2^-8) = 1.00390625 is a bf16 tie -> 1.0
    (even), 1.0 x (1 + 3*2^-8) rounds up to 1.015625; the partial last block row (192 = 128 + 64) uses its scale.
    Written over layer 0's q_a_proj [192, 320] of a synthetic checkpoint (every other tensor as synthesized)."""
    from dsv3ctl.core.checkpoint import load_index, read_header

    name = "model.layers.0.self_attn.q_a_proj.weight"
    idx = load_index(synth)
    w = np.full((192, 320), 0x38, np.uint8)
    w[129, 128] = 0x40
    s = np.ones((2, 3), np.float32)
    s[0, 1], s[1, 0], s[1, 1] = 2.0, 1 + 2**-8, 1 + 3 * 2**-8
    for tname, data in ((name, w.tobytes()), (name + "_scale_inv", s.tobytes())):
        shard = synth / idx.weight_map[tname]
        e = read_header(shard).tensors[tname]
        assert e.nbytes == len(data)
        with shard.open("r+b") as f:
            f.seek(read_header(shard).data_start + e.begin)
            f.write(data)
    cast_checkpoint(synth, tmp_path / "out", device="cpu", workers=1)
    out = _load_all(tmp_path / "out")[name].view(ml_dtypes.bfloat16).astype(np.float32)
    assert out[0, 0] == 1.0 and out[0, 128] == 2.0
    assert out[128, 0] == 1.0  # tie to even
    assert out[191, 127] == 1.0
    assert out[129, 128] == np.float32(ml_dtypes.bfloat16(2 * (1 + 3 * 2**-8)))  # 2.03125 after RNE
    assert out[129, 128] == 2.03125


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


KILLER = textwrap.dedent("""
    import os, signal, sys
    from dsv3ctl.adapters import cast
    limit = int(sys.argv[3]); calls = [0]
    orig_write = cast._Writer.write
    def write(self, data):
        calls[0] += 1
        if calls[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        orig_write(self, data)
    cast._Writer.write = write
    if limit < 0:  # kill after the rename of the first shard, before its manifest entry
        orig_commit = cast._Writer.commit
        def commit(self):
            orig_commit(self); os.kill(os.getpid(), signal.SIGKILL)
        cast._Writer.commit = commit
    cast.cast_checkpoint(sys.argv[1], sys.argv[2], device="cpu", workers=1, chunk_bytes=4096)
""")


@pytest.mark.parametrize("kill_at", [1, 7, 60, 150, -1])
def test_kill_9_then_rerun_is_byte_identical(synth, tmp_path, kill_at):
    ref = tmp_path / "ref"
    cast_checkpoint(synth, ref, device="cpu", workers=2, chunk_bytes=4096)
    dst = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cp = subprocess.run([sys.executable, "-c", KILLER, str(synth), str(dst), str(kill_at)], env=env,
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == -9, cp.stderr  # it really was killed mid-run
    assert any(p.name.endswith(".partial") for p in dst.iterdir()) or kill_at == -1
    res = cast_checkpoint(synth, dst, device="cpu", workers=2)
    assert _snapshot(dst) == _snapshot(ref)
    assert not [p for p in dst.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    if kill_at == -1:
        assert res.shards_done == 4  # the renamed-but-unrecorded shard is redone, identically


def test_rerun_skips_verified_shards_and_redoes_damaged_ones(synth, tmp_path):
    dst = tmp_path / "bf16"
    cast_checkpoint(synth, dst, device="cpu", workers=2)
    again = cast_checkpoint(synth, dst, device="cpu", workers=2)
    assert (again.shards_done, again.shards_skipped) == (0, 4)
    victim = sorted(dst.glob("*.safetensors"))[1]
    good = victim.read_bytes()
    victim.write_bytes(good[:-1])
    third = cast_checkpoint(synth, dst, device="cpu", workers=2)
    assert (third.shards_done, third.shards_skipped) == (1, 3)
    assert victim.read_bytes() == good


MEM = textwrap.dedent("""
    import json, resource, sys
    import numpy, ml_dtypes
    from dsv3ctl.adapters import cast
    from dsv3ctl.core import checkpoint
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cast.cast_checkpoint(sys.argv[1], sys.argv[2], device="cpu", workers=1)
    print(json.dumps({"base_kib": base, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def test_cast_memory_is_bounded_by_shard_size(tmp_path):
    """Two shards of a synthetic checkpoint with DeepSeek-V3's real expert shapes ([2048, 7168] / [7168, 2048],
    5 experts, ~112 MB each): the cast's peak RSS growth must stay under 2 x the largest shard."""
    src = tmp_path / "big"
    write_synthetic(src, shards=2, seed=0, overrides={
        "hidden_size": 7168, "moe_intermediate_size": 2048, "num_hidden_layers": 1, "first_k_dense_replace": 0,
        "num_attention_heads": 1, "num_key_value_heads": 1, "q_lora_rank": 128, "kv_lora_rank": 128,
        "vocab_size": 256, "num_nextn_predict_layers": 0})
    largest = max(p.stat().st_size for p in src.glob("*.safetensors"))
    cp = subprocess.run([sys.executable, "-c", MEM, str(src), str(tmp_path / "out")],
                        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    m = json.loads(cp.stdout)
    grown = (m["peak_kib"] - m["base_kib"]) * 1024
    assert grown < 2 * largest, (grown, largest)


def test_cast_refuses_bad_arguments(synth, tmp_path, run_cli):
    r = run_cli("weights", "cast-bf16", synth, synth / "inside", "--device", "cpu")
    assert r.code == 2 and "inside SRC" in r.err
    r = run_cli("weights", "cast-bf16", synth, tmp_path / "o", "--device", "tpu")
    assert r.code == 2 and "auto, cpu or cuda" in r.err
    try:
        import torch  # noqa: F401
        has_torch = True
    except ImportError:
        has_torch = False
    if not has_torch:
        r = run_cli("weights", "cast-bf16", synth, tmp_path / "o", "--device", "cuda")
        assert r.code == 2 and "--device cpu" in r.err


def test_download_plan_resume_patterns_and_disk(tmp_path):
    files = [RemoteFile("config.json", 1_700), RemoteFile("model-00001-of-000002.safetensors", 5_000, "a" * 64),
             RemoteFile("model-00002-of-000002.safetensors", 7_000, "b" * 64), RemoteFile("figures/x.png", 99)]
    (tmp_path / "model-00001-of-000002.safetensors").write_bytes(b"x" * 5_000)  # complete
    (tmp_path / "model-00002-of-000002.safetensors").write_bytes(b"x" * 10)  # partial -> fetch
    p = plan_download(files, ["*.safetensors", "*.json", "*.tiktoken"], ["*.png"], tmp_path, free_bytes=10**12)
    assert [f.path for f in p.complete] == ["model-00001-of-000002.safetensors"]
    assert sorted(f.path for f in p.fetch) == ["config.json", "model-00002-of-000002.safetensors"]
    assert p.unmatched_patterns == ["*.tiktoken"]
    assert p.download_bytes == 8_700 and p.fits
    cast = plan_download(files, ["*.safetensors", "*.json"], [], tmp_path, cast_planned=True, free_bytes=10**12)
    assert cast.cast_bytes > 1.3e12 and not cast.fits  # the BF16 cast of the full model is ~1.37 TB


def test_synth_onto_an_existing_file_is_a_clean_error(run_cli, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = run_cli("weights", "synth", str(f))
    assert r.code == 2 and "not a directory" in r.err and "Traceback" not in r.err
    assert f.read_text() == "x"


@pytest.mark.parametrize("dry_run", [True, False])
def test_download_without_network_names_endpoint_and_fix(run_cli, tmp_path, monkeypatch, dry_run):
    """Connection errors of the hub's HTTP library (httpx2/httpx/requests) become RuntimeFailure at the adapter."""
    import huggingface_hub

    from dsv3ctl.adapters import hub

    exc = next(c for c in hub._transport_errors() if c is not OSError)

    def boom(*a, **k):
        raise exc("[Errno -2] Name or service not known")

    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.invalid")
    monkeypatch.setattr(hub, "endpoint", lambda: "https://hub.example.invalid")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", boom)
    args = ["weights", "download", "--out", str(tmp_path / "dl")] + (["--dry-run"] if dry_run else [])
    r = run_cli(*args)
    assert r.code == 1, r.err
    assert "https://hub.example.invalid" in r.err and "HF_ENDPOINT" in r.err and "Traceback" not in r.err


def test_snapshot_connection_error_is_a_runtime_failure(tmp_path, monkeypatch):
    import huggingface_hub

    from dsv3ctl.adapters import hub
    from dsv3ctl.errors import RuntimeFailure

    exc = next(c for c in hub._transport_errors() if c is not OSError)

    def boom(*a, **k):
        raise exc("connection reset")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", boom)
    shard = RemoteFile("model-00001-of-000163.safetensors", 10, "a" * 64)
    with pytest.raises(RuntimeFailure, match="rerun the same command to resume"):
        hub.fetch("deepseek-ai/DeepSeek-V3", "0" * 40, [shard], tmp_path, None, lambda _m: None)


# --------------------------------------------------------------------------------------- checks before the work


def _damage(synth: Path, how: str) -> None:
    idx_p = synth / INDEX_NAME
    if how == "missing shard":
        sorted(synth.glob("model-*.safetensors"))[2].unlink()
    elif how == "missing config.json":
        (synth / "config.json").unlink()
    elif how == "truncated index":  # the file cut short: not JSON
        idx_p.write_bytes(idx_p.read_bytes()[: idx_p.stat().st_size // 2])
    elif how == "index missing entries":  # valid JSON, half of weight_map gone
        doc = json.loads(idx_p.read_text())
        wm = doc["weight_map"]
        doc["weight_map"] = dict(list(wm.items())[: len(wm) // 2])
        idx_p.write_text(json.dumps(doc))


@pytest.mark.parametrize("how, code, words", [
    ("missing shard", 1, "shard file missing"),
    ("missing config.json", 2, "no config.json"),
    ("truncated index", 1, "not a safetensors index"),
    ("index missing entries", 1, "missing"),
])
def test_cast_checks_the_source_before_writing_anything(synth, tmp_path, run_cli, how, code, words):
    _damage(synth, how)
    dst = tmp_path / "bf16"
    r = run_cli("weights", "cast-bf16", synth, dst, "--device", "cpu")
    assert r.code == code, r.err
    assert words in r.err and "Traceback" not in r.err
    assert not dst.exists()  # nothing written, not even the directory


def test_cast_of_a_bf16_source_is_a_noop_or_exit_2_with_strict(synth, tmp_path, run_cli):
    bf16 = tmp_path / "bf16"
    cast_checkpoint(synth, bf16, device="cpu", workers=2)
    again = tmp_path / "again"
    r = run_cli("weights", "cast-bf16", bf16, again, "--device", "cpu")
    assert r.code == 0, r.err
    assert "already a bf16 checkpoint" in r.out and "nothing to cast" in r.out and not again.exists()
    r = run_cli("weights", "cast-bf16", bf16, again, "--device", "cpu", "--strict")
    assert r.code == 2 and "already a bf16 checkpoint" in r.err and not again.exists()


FAKE_TORCH = '''"""TEST DOUBLE of torch: a CUDA device of compute capability {cap}; nothing else works."""
__version__ = "2.99.0+double"
float8_e4m3fn = object()


class cuda:
    @staticmethod
    def is_available():
        return True

    @staticmethod
    def get_device_capability(i=0):
        return {cap}

    @staticmethod
    def get_device_name(i=0):
        return "Stand-in A100"

    class Stream:
        def __init__(self, *a, **k):
            raise AssertionError("the GPU path must not start on an unsupported GPU")
'''


@pytest.mark.parametrize("cap", [(8, 0)])
def test_gpu_below_sm89_falls_back_to_cpu_or_is_exit_2(synth, tmp_path, cap):
    """torch replaced by a stand-in reporting an SM 8.0 GPU (tests cannot have a GPU): --device auto casts on the
    CPU with a one-line notice, --device cuda is exit 2 naming the capability, before anything is written."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(FAKE_TORCH.format(cap=cap))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), str(ROOT)]), NO_COLOR="1", COLUMNS="200")
    cli = [sys.executable, "-m", "dsv3ctl", "weights", "cast-bf16", str(synth)]
    cp = subprocess.run([*cli, str(tmp_path / "auto"), "--device", "auto", "--workers", "1"], env=env,
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    notice = [ln for ln in (cp.stdout + cp.stderr).splitlines() if ln.startswith("notice:")]
    assert notice == ["notice: GPU 0 (Stand-in A100) has compute capability 8.0; the FP8 cast kernel needs 8.9 or "
                      "newer (Ada, Hopper, Blackwell); casting on the CPU instead"], cp.stdout + cp.stderr
    out = verify_checkpoint(tmp_path / "auto")
    assert "on cpu with 1 workers" in cp.stdout and out.ok and out.precision == "bf16"
    cp = subprocess.run([*cli, str(tmp_path / "cuda"), "--device", "cuda"], env=env, capture_output=True, text=True,
                        timeout=300)
    assert cp.returncode == 2, cp.stderr
    assert "--device cuda: GPU 0 (Stand-in A100) has compute capability 8.0" in cp.stderr
    assert "--device cpu" in cp.stderr and "Traceback" not in cp.stderr and not (tmp_path / "cuda").exists()


# --------------------------------------------------------------------------------------- memory-aware long steps


def _fake_host(tmp_path: Path, meminfo_gib: float, cgroup: dict[str, str] | None, v1: bool = False) -> tuple[Path, Path]:
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 999999999 kB\nMemAvailable: {int(meminfo_gib * 1024 * 1024)} kB\n")
    (proc / "self" / "cgroup").write_text("9:memory:/kubepods/pod1/c1\n" if v1 else "0::/kubepods/pod1/c1\n")
    d = cg / ("memory" if v1 else "") / "kubepods" / "pod1" / "c1"
    d.mkdir(parents=True)
    for k, v in (cgroup or {}).items():
        (d / k).write_text(v + "\n")
    return proc, cg


def test_memory_budget_is_the_smaller_of_meminfo_and_the_cgroup(tmp_path):
    from dsv3ctl.adapters.sysmem import GIB, budget

    proc, cg = _fake_host(tmp_path / "a", 64, {"memory.max": str(8 * GIB), "memory.current": str(3 * GIB),
                                                "memory.stat": f"anon 1\ninactive_file {GIB}\n"})
    b = budget(proc, cg)
    assert (b.available, b.cgroup_limit, b.meminfo_available) == (6 * GIB, 8 * GIB, 64 * GIB)
    assert b.source.startswith("cgroup v2") and b.source.endswith("kubepods/pod1/c1")
    proc, cg = _fake_host(tmp_path / "b", 4, {"memory.max": "max", "memory.current": str(GIB)})
    assert budget(proc, cg).available == 4 * GIB and budget(proc, cg).source == "MemAvailable"
    proc, cg = _fake_host(tmp_path / "c", 64, {"memory.limit_in_bytes": str(16 * GIB),
                                                "memory.usage_in_bytes": str(12 * GIB),
                                                "memory.stat": f"total_inactive_file {2 * GIB}\n"}, v1=True)
    assert budget(proc, cg).available == 6 * GIB and budget(proc, cg).source.startswith("cgroup v1")


def test_cast_workers_are_capped_by_the_memory_budget(synth, tmp_path, monkeypatch):
    from dsv3ctl.adapters import cast, sysmem

    per = cast.worker_bytes("cpu")
    monkeypatch.setattr(sysmem, "budget", lambda: sysmem.MemoryBudget(2 * per + 1, 64 << 30, 2 * per + 1,
                                                                       2 * per + 1, "cgroup v2 /x"))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    logs: list[str] = []
    res = cast_checkpoint(synth, tmp_path / "bf16", device="cpu", log=logs.append)
    assert res.workers == 2 and any(m.startswith("workers capped from 8 to 2") and "cgroup v2 /x" in m for m in logs)


def test_a_step_killed_by_sigkill_names_the_oom_killer_the_estimate_and_the_flag(tmp_path):
    from dsv3ctl.adapters import trtllm
    from dsv3ctl.core.spec import Spec
    from dsv3ctl.errors import RuntimeFailure

    pf = trtllm.Preflight("convert", workers=4, mem_per_worker=3 << 30)
    argv = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    with pytest.raises(RuntimeFailure) as e:
        trtllm.run_step("convert", Spec(), tmp_path / "ckpt", argv, pf, lambda d, s: [], ".safetensors",
                        lambda _m: None)
    msg = e.value.message
    assert "exited with status -9" in msg and "killed by SIGKILL: the kernel's OOM killer is the likely cause" in msg
    assert "about 12.0 GiB" in msg and "lower it with --workers 2" in msg
