"""DeepSeek-V3 facts derived from config.json alone must reproduce the published figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv3ctl.core.model import DeepSeekV3Config, scale_shape
from dsv3ctl.errors import SpecError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def v3() -> DeepSeekV3Config:
    return DeepSeekV3Config.load(FIXTURES / "deepseek_v3_config.json")


def test_embedded_config_is_the_fixture():
    assert DeepSeekV3Config.default().raw == json.loads((FIXTURES / "deepseek_v3_config.json").read_text())


def test_main_params_671b(v3):
    assert v3.params_main == pytest.approx(671.0e9, rel=0.003)


def test_mtp_params_11_5b(v3):
    assert v3.params_mtp == pytest.approx(11.5e9, rel=0.02)


def test_activated_36_7b(v3):
    assert v3.params_activated == pytest.approx(36.7e9, rel=0.01)


def test_fp8_checkpoint_has_91991_tensors(v3):
    assert v3.checkpoint_tensor_count("fp8") == 91_991


def test_bf16_checkpoint_drops_scales(v3):
    n_scales = sum(1 for t in v3.tensors("fp8") if t.name.endswith("_scale_inv"))
    assert v3.checkpoint_tensor_count("bf16") == 91_991 - n_scales


def test_every_scale_shape_is_ceil_divided(v3):
    shapes = {t.name: t.shape for t in v3.tensors("fp8")}
    scales = [n for n in shapes if n.endswith("_scale_inv")]
    assert scales
    for s in scales:
        w = shapes[s.removesuffix("_scale_inv")]
        assert shapes[s] == (-(-w[0] // 128), -(-w[1] // 128)), s


def test_kv_a_proj_scale_is_5x56(v3):
    shapes = {t.name: t.shape for t in v3.tensors("fp8")}
    assert shapes["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"] == (576, 7168)
    assert shapes["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"] == (5, 56)
    assert scale_shape((576, 7168)) == (5, 56)


def test_checkpoint_size_is_about_689_gb(v3):
    assert v3.checkpoint_bytes("fp8") == pytest.approx(689e9, rel=0.01)


def test_mla_kv_bytes_per_token(v3):
    assert v3.kv_bytes_per_token(2) == 61 * (512 + 64) * 2


def test_rejects_other_architectures(tmp_path):
    raw = json.loads((FIXTURES / "deepseek_v3_config.json").read_text())
    raw["architectures"] = ["LlamaForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(SpecError, match="DeepseekV3ForCausalLM"):
        DeepSeekV3Config.load(tmp_path)


def test_missing_keys_are_named(tmp_path):
    raw = json.loads((FIXTURES / "deepseek_v3_config.json").read_text())
    del raw["kv_lora_rank"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(SpecError, match="kv_lora_rank"):
        DeepSeekV3Config.load(tmp_path / "config.json")


def independent_v3_names(cfg: dict) -> set[str]:
    """Every tensor name of a DeepSeek-V3-layout FP8 checkpoint, from config.json numbers alone (not from
    ``DeepSeekV3Config.tensors()``): names as in deepseek-ai/DeepSeek-V3 ``inference/convert.py`` (its
    ``mapping`` of q_a_proj, kv_a_proj_with_mqa, ..., e_score_correction_bias) and ``README_WEIGHTS.md`` (the
    MTP layer 61: embed_tokens, enorm, hnorm, eh_proj, shared_head.norm/head); every FP8 linear weight
    has a ``weight_scale_inv``. The real checkpoint's index could not be fetched here (no route to
    huggingface.co), so this is the independent derivation the count is checked against."""
    layers, dense = cfg["num_hidden_layers"], cfg["first_k_dense_replace"]
    experts, mtp = cfg["n_routed_experts"], cfg.get("num_nextn_predict_layers", 0)
    lin = lambda p: {f"{p}.weight", f"{p}.weight_scale_inv"}  # noqa: E731
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(layers + mtp):
        p = f"model.layers.{i}"
        names |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight",
                  f"{p}.self_attn.q_a_layernorm.weight", f"{p}.self_attn.kv_a_layernorm.weight"}
        for w in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"):
            names |= lin(f"{p}.self_attn.{w}")
        mlps = [f"{p}.mlp"] if i < dense else [f"{p}.mlp.shared_experts"] + [f"{p}.mlp.experts.{e}" for e in range(experts)]
        if i >= dense:
            names |= {f"{p}.mlp.gate.weight", f"{p}.mlp.gate.e_score_correction_bias"}
        for m in mlps:
            for w in ("gate_proj", "up_proj", "down_proj"):
                names |= lin(f"{m}.{w}")
        if i >= layers:  # MTP module
            names |= {f"{p}.embed_tokens.weight", f"{p}.enorm.weight", f"{p}.hnorm.weight", f"{p}.eh_proj.weight",
                      f"{p}.shared_head.norm.weight", f"{p}.shared_head.head.weight"}
    return names


def test_91991_tensor_names_derived_independently(v3):
    """Closed form: 3 dense layers x 20 + 58 MoE layers x 1,558 + 3 globals + the MTP layer's 1,558 + 6 =
    91,991; and the same set of names as the model's generator."""
    names = independent_v3_names(v3.raw)
    assert len(names) == 3 * 20 + 58 * 1558 + 3 + 1558 + 6 == 91_991
    assert {t.name for t in v3.tensors("fp8")} == names
