"""argv of TensorRT-LLM's DeepSeek-V3 ``convert_checkpoint.py`` and of ``trtllm-build``, from the spec.

Every flag is in the contract data ``dsv3ctl/data/contracts/convert_checkpoint.json`` and
``trtllm_build.json`` with the file and line it was read at (NVIDIA/TensorRT-LLM ``deepseek`` branch
@ 0321f71e: ``examples/deepseek_v3/convert_checkpoint.py``, ``tensorrt_llm/commands/build.py``,
``tensorrt_llm/plugin/plugin.py``); ``--use_fp8_weights`` is from the branch's README after PR #2719 (its
converter source was not available), and ``dsv3ctl convert`` probes the installed converter for it:
- convert: ``--model_dir``, ``--output_dir``, ``--dtype {float32,bfloat16,float16}``, ``--tp_size``,
  ``--pp_size``, ``--moe_tp_size``, ``--moe_ep_size`` (moe_tp x moe_ep must equal tp), ``--workers``
  (one thread per rank), ``--use_fp8_weights`` (FP8 branch only).
- build: ``--checkpoint_dir``, ``--output_dir``, ``--max_batch_size``, ``--max_seq_len``,
  ``--max_input_len``, ``--max_num_tokens``, ``--max_beam_width``, ``--use_paged_context_fmha enable``,
  ``--workers``; the BF16 variant adds ``--gpt_attention_plugin bfloat16 --gemm_plugin bfloat16``.
"""

from __future__ import annotations

from pathlib import Path

from dsv3ctl.core.spec import Spec
from dsv3ctl.errors import SpecError

DTYPE = {"fp8": "bfloat16", "bf16": "bfloat16", "fp16": "float16"}


def convert_argv(spec: Spec, model_dir: str | Path, output_dir: str | Path, workers: int,
                 python: str = "python3", script: str = "convert_checkpoint.py") -> list[str]:
    """argv of the conversion (engine mode). FP8 adds ``--use_fp8_weights``; activations stay BF16.
    Raises SpecError in llmapi mode (no conversion there) or when moe_ep does not divide tp."""
    if spec.serving.mode != "engine":
        raise SpecError("serving.mode=llmapi: no conversion is needed (the PyTorch backend reads the Hugging Face "
                        "checkpoint); use serving.mode=engine for TensorRT engines")
    par = spec.parallelism
    if par.tp % par.moe_ep:
        raise SpecError(f"parallelism.moe_ep={par.moe_ep} must divide parallelism.tp={par.tp} "
                        "(moe_tp x moe_ep = tp); e.g. moe_ep=1")
    prec = spec.model.precision
    argv = [python, script, "--model_dir", str(model_dir), "--output_dir", str(output_dir),
            "--dtype", DTYPE[prec], "--tp_size", str(par.tp), "--pp_size", str(par.pp),
            "--moe_tp_size", str(par.moe_tp), "--moe_ep_size", str(par.moe_ep), "--workers", str(workers)]
    if prec == "fp8":
        argv.append("--use_fp8_weights")
    return argv


def build_argv(spec: Spec, checkpoint_dir: str | Path, output_dir: str | Path, workers: int,
               exe: str = "trtllm-build") -> list[str]:
    """argv of ``trtllm-build`` from spec.serving (sizes, paged context FMHA) and precision (BF16 plugins)."""
    sv = spec.serving
    argv = [exe, "--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(output_dir),
            "--max_batch_size", str(sv.max_batch_size), "--max_seq_len", str(sv.max_seq_len),
            "--max_input_len", str(sv.max_input_len), "--max_num_tokens", str(sv.max_num_tokens),
            "--max_beam_width", str(sv.max_beam_width)]
    if sv.paged_context_fmha:
        argv += ["--use_paged_context_fmha", "enable"]
    if spec.model.precision in ("bf16", "fp16"):
        dt = DTYPE[spec.model.precision]
        argv += ["--gpt_attention_plugin", dt, "--gemm_plugin", dt]
    argv += ["--workers", str(workers)]
    return argv
