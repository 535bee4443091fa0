"""A small SYNTHETIC FP8 checkpoint in DeepSeek-V3's exact format, for demos, tests and benchmarks.

Tensor names, dtypes, the ``_scale_inv`` convention and the index layout are the real release's
(deepseek-ai/DeepSeek-V3 ``README_WEIGHTS.md`` @ 9b4e9788, via :meth:`DeepSeekV3Config.tensors`); the
dimensions are scaled down through a scaled ``config.json`` chosen so that every FP8 weight class has
partial 128x128 edge blocks (e.g. kv_a_proj_with_mqa is 80 x 320 -> scale [1, 3]). Some scales are
placed in a different shard than their weight, as in the release. The config carries
``"_dsv3ctl_synthetic": true`` and the directory a README.md saying the values are random.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsv3ctl.core.checkpoint import INDEX_NAME, encode_header
from dsv3ctl.core.model import DeepSeekV3Config
from dsv3ctl.fsutil import atomic_write_bytes, atomic_write_text

SYNTH_OVERRIDES: dict[str, Any] = {
    "hidden_size": 320, "intermediate_size": 384, "moe_intermediate_size": 96, "num_hidden_layers": 4,
    "first_k_dense_replace": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "n_routed_experts": 4,
    "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "kv_lora_rank": 64,
    "q_lora_rank": 192, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32, "vocab_size": 1000,
    "num_nextn_predict_layers": 1, "max_position_embeddings": 4096,
}

README = """# SYNTHETIC DeepSeek-V3 checkpoint (random values)

Written by `dsv3ctl weights synth`. It has DeepSeek-V3's real tensor names, dtypes (float8_e4m3fn weights
with float32 `weight_scale_inv` block scales, BF16 norms/embeddings, FP32 router bias) and index layout,
but scaled-down dimensions (see config.json, `_dsv3ctl_synthetic: true`) and random values.
It is NOT a model: use it to exercise `dsv3ctl weights verify` and `dsv3ctl weights cast-bf16`.
"""


def synth_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The real config.json with the scaled-down dimensions applied and the synthetic label."""
    raw = dict(DeepSeekV3Config.default().raw)
    raw.update(SYNTH_OVERRIDES)
    raw.update(overrides or {})
    raw["_dsv3ctl_synthetic"] = True
    return raw


def _values(rng: Any, dtype: str, shape: tuple[int, ...]) -> Any:
    import numpy as np

    n = int(np.prod(shape)) if shape else 1
    if dtype == "F8_E4M3":
        b = rng.integers(0, 256, n, dtype=np.uint8)
        b[(b & 0x7F) == 0x7F] ^= 0x01  # 0x7F/0xFF are NaN in e4m3fn: keep values finite, as real weights are
        return b
    if dtype == "F32":
        return (rng.random(n, dtype=np.float32) * 1e-2 + 1e-4).astype("<f4")
    vals = rng.standard_normal(n, dtype=np.float32) * 0.02
    if dtype == "F16":
        return vals.astype("<f2")
    return (vals.view(np.uint32) >> 16).astype("<u2")  # BF16 bits by truncation (random values: no ml_dtypes needed)


def write_synthetic(out: str | Path, shards: int = 4, seed: int = 0, overrides: dict[str, Any] | None = None,
                    cross_shard_every: int = 5) -> dict[str, Any]:
    """Write the synthetic checkpoint to ``out`` and return a summary {path, tensors, shards, bytes}.

    Tensors are assigned to ``shards`` files in order by cumulative size; every ``cross_shard_every``-th
    FP8 weight gets its scale in the next shard. Deterministic for a given seed.
    """
    import numpy as np

    from dsv3ctl.errors import SpecError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpecError(f"{out}: exists and is not a directory; `weights synth` writes a checkpoint directory",
                        hint="choose another path (a new or existing directory)")
    bad = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if bad is not None:
        raise SpecError(f"{out}: {bad} is a file, not a directory", hint="choose another path")
    out.mkdir(parents=True, exist_ok=True)
    raw = synth_config(overrides)
    cfg = DeepSeekV3Config(raw, "synthetic config.json")
    tensors = list(cfg.tensors("fp8", include_mtp=cfg.mtp_layers > 0))
    total = sum(t.nbytes for t in tensors)
    per = total / shards
    assign: dict[str, int] = {}
    acc = 0
    fp8_seen = 0
    for t in tensors:
        k = min(int(acc / per), shards - 1)
        if t.kind == "scale":
            wname = t.name[: -len("_scale_inv")]
            if assign[wname] == k and fp8_seen % cross_shard_every == 0:
                k = (k + 1) % shards
        elif t.dtype == "F8_E4M3":
            fp8_seen += 1
        assign[t.name] = k
        acc += t.nbytes
    names = [f"model-{i + 1:05d}-of-{shards:06d}.safetensors" for i in range(shards)]
    rng = np.random.default_rng(seed)
    data = {t.name: _values(rng, t.dtype, t.shape) for t in tensors}
    for i, fname in enumerate(names):
        group = [t for t in tensors if assign[t.name] == i]
        header, _ = encode_header([(t.name, t.dtype, t.shape) for t in group], {"format": "pt"})
        payload = b"".join(np.ascontiguousarray(data[t.name]).tobytes() for t in group)
        atomic_write_bytes(out / fname, header + payload)
    index = {"metadata": {"total_size": total}, "weight_map": {t.name: names[assign[t.name]] for t in tensors}}
    atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    atomic_write_text(out / "config.json", json.dumps(raw, indent=2) + "\n")
    atomic_write_text(out / "README.md", README)
    return {"path": str(out), "tensors": len(tensors), "shards": shards, "bytes": total, "synthetic": True}
