"""convert_checkpoint.py / trtllm-build argv rendered from the spec, each flag checked against the
reference (TensorRT-LLM deepseek branch, examples/deepseek_v3 README and convert_checkpoint.py)."""

from __future__ import annotations

import pytest

from dsv3ctl.core.spec import parse_spec
from dsv3ctl.errors import SpecError
from dsv3ctl.render.trtllm import build_argv, convert_argv


def _flags(argv: list[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[a] = argv[i + 1]
                i += 2
                continue
            out[a] = True
        i += 1
    return out


def test_fp8_convert_matches_the_deepseek_branch_readme():
    s = parse_spec({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}, "hardware": {"gpu": "H200"}})
    argv = convert_argv(s, "/m/DeepSeek-V3", "/m/ckpt", workers=8)
    f = _flags(argv)
    assert argv[1] == "convert_checkpoint.py"
    assert f == {"--model_dir": "/m/DeepSeek-V3", "--output_dir": "/m/ckpt", "--dtype": "bfloat16", "--tp_size": "8",
                 "--pp_size": "1", "--moe_tp_size": "8", "--moe_ep_size": "1", "--workers": "8",
                 "--use_fp8_weights": True}


def test_bf16_convert_has_no_fp8_flag_and_moe_split():
    s = parse_spec({"model": {"precision": "bf16"}, "parallelism": {"nodes": 4, "gpus_per_node": 8, "tp": 32,
                                                                    "moe_ep": 4}})
    f = _flags(convert_argv(s, "/m/bf16", "/m/ckpt", workers=4))
    assert "--use_fp8_weights" not in f and f["--moe_tp_size"] == "8" and f["--moe_ep_size"] == "4"


def test_build_argv_fp8_is_the_readme_command():
    s = parse_spec({"serving": {"max_batch_size": 4, "max_seq_len": 4096, "max_input_len": 2048}})
    f = _flags(build_argv(s, "/c", "/e", workers=8))
    assert f == {"--checkpoint_dir": "/c", "--output_dir": "/e", "--max_batch_size": "4", "--max_seq_len": "4096",
                 "--max_input_len": "2048", "--max_num_tokens": "8192", "--max_beam_width": "1",
                 "--use_paged_context_fmha": "enable", "--workers": "8"}


def test_build_argv_bf16_adds_the_bf16_plugins():
    s = parse_spec({"model": {"precision": "bf16"}})
    f = _flags(build_argv(s, "/c", "/e", workers=1))
    assert f["--gpt_attention_plugin"] == "bfloat16" and f["--gemm_plugin"] == "bfloat16"


def test_llmapi_mode_refuses_conversion():
    s = parse_spec({"serving": {"mode": "llmapi"}})
    with pytest.raises(SpecError, match="no conversion is needed"):
        convert_argv(s, "/m", "/c", workers=1)
