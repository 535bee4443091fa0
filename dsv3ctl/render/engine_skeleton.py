"""A labelled engine-directory skeleton: what ``trtllm-build`` writes for DeepSeek-V3, without engines.

``files(spec)`` -> ``{relative path: bytes}``: ``config.json`` with the top-level keys ``version``,
``pretrained_config`` and ``build_config`` filled from the spec the way trtllm-build fills them, plus one
key ``dsv3ctl_placeholder`` (absent from real engines) that marks the directory as a skeleton;
``rank{N}.engine`` for N = 0 .. tp x pp - 1 as EMPTY placeholder files; and ``PLACEHOLDER.txt`` saying so.
Used by tests (TP 8 / TP 16 fixtures) and by the demo (``dsv3ctl repo engine-skeleton``), where no GPU
can build real engines. Nothing here can be served.

Sources (reference: TensorRT-LLM ``deepseek`` branch, yingcanw/TensorRT-LLM @ 0321f71e = NVIDIA deepseek
branch 2025-01-16, version ``0.17.0.dev2024121700``):
- ``EngineConfig.to_dict`` (``tensorrt_llm/builder.py``): top-level keys version, pretrained_config,
  build_config; ``BuildConfig`` defaults (opt_batch_size 8, max_prompt_embedding_table_size 0,
  kv_cache_type "PAGED", strongly_typed true, ...); ``PluginConfig`` keys and defaults
  (``tensorrt_llm/plugin/plugin.py``).
- ``PretrainedConfig.to_dict`` + DeepSeekV2Config extras (``tensorrt_llm/models/modeling_utils.py``,
  ``models/deepseek_v2/config.py``): mapping {world_size, gpus_per_node, cp_size, tp_size, pp_size,
  moe_tp_size, moe_ep_size}; V3 values num_key_value_heads 1, head_size 576 (kv_lora_rank + rope dim),
  position_embedding_type rope_gpt_neox, hidden_act swiglu, logits_dtype float32.
- ``fp8_format``: ``models/deepseek_v2/config.py:168`` @ 0321f71e passes ``fp8_format=False`` (hard-coded)
  into the config, so a commit whose source was read (``dsv3ctl/data/trtllm_commits.json``, verified rows)
  writes ``false``. How the FP8 state of the branch (PR #2719) records FP8 weights was not read, so for the
  branch or an unknown commit the skeleton leaves ``fp8_format`` out rather than guess.
- File names ``rank{N}.engine`` (``cpp/tensorrt_llm/runtime/gptJsonConfig.cpp``, GptJsonConfig::engineFilename).
"""

from __future__ import annotations

import json
from typing import Any

from dsv3ctl.core.model import DeepSeekV3Config
from dsv3ctl.core.spec import Spec
from dsv3ctl.core.trtllm_pin import lookup

TRTLLM_DEEPSEEK_BRANCH_VERSION = "0.17.0.dev2024121700"
PLACEHOLDER_KEY = "dsv3ctl_placeholder"
PLACEHOLDER_FILE = "PLACEHOLDER.txt"


def engine_config(spec: Spec, model: DeepSeekV3Config | None = None) -> dict[str, Any]:
    """The ``config.json`` of the skeleton (a dict). Sizes come from ``spec.serving``, the mapping from
    ``spec.parallelism`` (world_size = tp x pp), the architecture from ``model`` (default: the embedded
    deepseek-ai/DeepSeek-V3 config.json)."""
    m = model or DeepSeekV3Config.default()
    raw = m.raw
    par, srv = spec.parallelism, spec.serving
    dtype = "float16" if spec.model.precision == "fp16" else "bfloat16"
    pretrained = {
        "architecture": "DeepseekV3ForCausalLM",
        "dtype": dtype,
        "vocab_size": m.vocab,
        "hidden_size": m.hidden,
        "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads,
        "num_key_value_heads": 1,
        "head_size": m.kv_lora_rank + m.qk_rope,
        "hidden_act": "swiglu",
        "intermediate_size": m.intermediate,
        "norm_epsilon": raw.get("rms_norm_eps", 1e-6),
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": raw.get("max_position_embeddings", 163840),
        "rotary_embedding_dim": m.qk_rope,
        "logits_dtype": "float32",
        "qk_layernorm": False,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "mapping": {
            "world_size": par.tp * par.pp,
            "gpus_per_node": par.gpus_per_node,
            "cp_size": 1,
            "tp_size": par.tp,
            "pp_size": par.pp,
            "moe_tp_size": par.moe_tp,
            "moe_ep_size": par.moe_ep,
        },
        "quantization": {
            "quant_algo": None, "kv_cache_quant_algo": None, "group_size": 128, "smoothquant_val": 0.5,
            "clamp_val": None, "use_meta_recipe": False, "has_zero_point": False, "pre_quant_scale": False,
            "exclude_modules": None,
        },
        "rotary_base": raw.get("rope_theta", 10000),
        "rotary_scaling": dict(raw.get("rope_scaling") or {}),
        "moe": {
            "num_experts": m.experts, "shared_expert_intermediate_size": m.moe_intermediate * m.shared_experts,
            "top_k": m.top_k, "topk_method": raw.get("topk_method", "noaux_tc"),
            "device_limited_n_group": raw.get("n_group", 8), "device_limited_topk_group": raw.get("topk_group", 4),
            "device_limited_routed_scaling_factor": raw.get("routed_scaling_factor", 2.5),
        },
        "moe_inter_size": m.moe_intermediate,
        "kv_lora_rank": m.kv_lora_rank,
        "q_lora_rank": m.q_lora_rank,
        "qk_nope_head_dim": m.qk_nope,
        "qk_rope_head_dim": m.qk_rope,
        "v_head_dim": m.v_head,
        "first_k_dense_replace": m.first_dense,
        "moe_layer_freq": m.moe_layer_freq,
    }
    known = lookup(spec.image.trtllm_commit)
    if known is not None and known.verified_from_source:
        pretrained["fp8_format"] = False  # config.py:168 @ 0321f71e (and 130232d9): hard-coded
    build = {
        "max_input_len": srv.max_input_len,
        "max_seq_len": srv.max_seq_len,
        "opt_batch_size": 8,
        "max_batch_size": srv.max_batch_size,
        "max_beam_width": srv.max_beam_width,
        "max_num_tokens": srv.max_num_tokens,
        "opt_num_tokens": None,
        "max_prompt_embedding_table_size": 0,
        "kv_cache_type": "PAGED",
        "gather_context_logits": False,
        "gather_generation_logits": False,
        "strongly_typed": True,
        "speculative_decoding_mode": 1,
        "max_draft_len": 0,
        "plugin_config": {
            "dtype": dtype,
            "gpt_attention_plugin": "auto",
            "gemm_plugin": None,
            "nccl_plugin": "auto",
            "moe_plugin": "auto",
            "context_fmha": True,
            "paged_kv_cache": True,
            "remove_input_padding": True,
            "tokens_per_block": 64,
            "use_paged_context_fmha": srv.paged_context_fmha,
            "paged_state": True,
            "manage_weights": False,
            "pp_reduce_scatter": False,
            "lora_plugin": None,
        },
    }
    return {
        "version": TRTLLM_DEEPSEEK_BRANCH_VERSION,
        "pretrained_config": pretrained,
        "build_config": build,
        PLACEHOLDER_KEY: {
            "generator": "dsv3ctl repo engine-skeleton",
            "note": "labelled skeleton: rank*.engine files are EMPTY placeholders; build real engines with trtllm-build",
        },
    }


def files(spec: Spec, model: DeepSeekV3Config | None = None) -> dict[str, bytes]:
    """Every file of the skeleton: config.json, PLACEHOLDER.txt and tp x pp empty ``rank{N}.engine``."""
    cfg = engine_config(spec, model)
    world = cfg["pretrained_config"]["mapping"]["world_size"]
    out: dict[str, bytes] = {"config.json": (json.dumps(cfg, indent=4) + "\n").encode()}
    out[PLACEHOLDER_FILE] = (
        "PLACEHOLDER ENGINE DIRECTORY written by `dsv3ctl repo engine-skeleton`.\n"
        f"rank0.engine .. rank{world - 1}.engine are EMPTY placeholder files, not TensorRT engines.\n"
        "config.json mirrors what trtllm-build writes for this spec so that `dsv3ctl repo build/check` can run;\n"
        "tritonserver cannot load this directory. Build real engines with trtllm-build.\n"
    ).encode()
    for r in range(world):
        out[f"rank{r}.engine"] = b""
    return out


def is_placeholder(config: dict[str, Any]) -> bool:
    return PLACEHOLDER_KEY in config
