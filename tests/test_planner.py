"""The planner: layout rules (property tests with hypothesis), memory sizing and the plan JSON."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv3ctl.core.hardware import GPUS
from dsv3ctl.core.planner import apply_fix, fix_text, make_plan, require_valid
from dsv3ctl.core.spec import parse_spec
from dsv3ctl.errors import SpecError

RULES = {"world_size", "tp_divides_heads", "moe_ep_divides_tp", "moe_ep_divides_experts", "engine_pp",
         "engine_hopper", "fp8_sm", "max_num_tokens", "memory_weights", "memory_kv_cache", "max_seq_len",
         # the pinned TensorRT-LLM commit and the converter's shape rules
         "trtllm_commit_capability", "tp_split_q_b_proj", "tp_split_kv_b_proj", "tp_split_o_proj", "tp_split_dense",
         "tp_split_shared", "moe_tp_divides_moe_inter", "moe_mixed_tp_ep", "fp8_block_q_b_proj",
         "fp8_block_kv_b_proj", "fp8_block_o_proj", "fp8_block_dense", "fp8_block_shared",
         "fp8_block_routed_experts", "mla_chunked_context"}


def spec(**sections):
    return parse_spec(sections)


def test_default_plan_passes_with_published_figures():
    p = make_plan(spec())
    assert p.ok, [c.message for c in p.errors]
    j = p.to_json()
    assert j["world_size"] == 16
    assert j["tensors"]["checkpoint_total"] == 91_991
    assert j["params"]["main"] == pytest.approx(671.0e9, rel=0.003)
    assert j["kv_cache"]["bytes_per_token"] == 70_272
    assert 0 < j["memory"]["per_gpu_gib"]["weights"] < 80
    assert {"weights", "kv_cache", "free"} <= set(j["memory"]["per_gpu_gib"])
    assert all({"name", "ok", "message"} <= set(c) for c in j["checks"])


def test_tp12_names_rule_and_alternative():
    p = make_plan(spec(parallelism={"nodes": 3, "gpus_per_node": 4, "tp": 12}))
    msgs = [c.message for c in p.errors]
    assert any(m.startswith("parallelism.tp=12 does not divide the 128 attention heads (tp is one of 1, 2, 4, 8, 16, "
                            "32, 64, 128); use parallelism.") for m in msgs), msgs


def test_engine_mode_refuses_pp():
    p = make_plan(spec(parallelism={"nodes": 2, "gpus_per_node": 8, "tp": 8, "pp": 2}))
    (err,) = [c for c in p.errors if c.name == "engine_pp"]
    assert "silently drops 1 of the 61" in err.message and "parallelism.pp=1" in err.message


def test_llmapi_allows_pp_with_warning():
    p = make_plan(spec(serving={"mode": "llmapi"}, parallelism={"nodes": 2, "gpus_per_node": 8, "tp": 8, "pp": 2},
                       hardware={"gpu": "H200"}))
    assert p.ok, [c.message for c in p.errors]
    assert any(c.name == "pp_uneven" and c.severity == "warning" for c in p.checks)


def test_engine_needs_hopper_and_fp8_needs_sm89():
    p = make_plan(spec(hardware={"gpu": "A100-80GB"}))
    names = {c.name for c in p.errors}
    assert {"engine_hopper", "fp8_sm"} <= names


def test_eight_h100_do_not_fit_fp8_but_eight_h200_do():
    one_node = {"nodes": 1, "gpus_per_node": 8, "tp": 8}
    h100 = make_plan(spec(parallelism=one_node))
    assert any(c.name == "memory_weights" for c in h100.errors)
    h200 = make_plan(spec(parallelism=one_node, hardware={"gpu": "H200"}))
    assert h200.ok, [c.message for c in h200.errors]


def test_kv_limits_refused_with_largest_that_fit():
    s = spec(parallelism={"nodes": 1, "gpus_per_node": 8, "tp": 8}, hardware={"gpu": "H200"},
             serving={"max_batch_size": 512, "max_seq_len": 163840, "max_input_len": 8192, "max_num_tokens": 8192})
    p = make_plan(s)
    (err,) = [c for c in p.errors if c.name == "memory_kv_cache"]
    assert "max_batch_size=" in err.message
    best = p.suggestion["max_batch_size"]
    assert best >= 1
    ok = make_plan(spec(parallelism={"nodes": 1, "gpus_per_node": 8, "tp": 8}, hardware={"gpu": "H200"},
                        serving={"max_batch_size": best, "max_seq_len": 163840, "max_input_len": 8192,
                                 "max_num_tokens": 8192}))
    assert ok.ok, [c.message for c in ok.errors]
    too_many = make_plan(spec(parallelism={"nodes": 1, "gpus_per_node": 8, "tp": 8}, hardware={"gpu": "H200"},
                              serving={"max_batch_size": best + 1, "max_seq_len": 163840, "max_input_len": 8192,
                                       "max_num_tokens": 8192}))
    assert not too_many.ok


def test_bf16_needs_more_memory_than_fp8():
    fp8 = make_plan(spec()).weights_bytes
    bf16 = make_plan(spec(model={"precision": "bf16"})).weights_bytes
    assert bf16 > 1.8 * fp8


def test_require_valid_raises_spec_error():
    with pytest.raises(SpecError, match="tp=12"):
        require_valid(make_plan(spec(parallelism={"nodes": 3, "gpus_per_node": 4, "tp": 12})))


# ------------------------------------------------------------------ the full layout grid, two ways
GRID = {
    "nodes": [1, 2, 3, 4, 8], "gpus_per_node": [1, 2, 4, 6, 8],
    "tp": [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64], "pp": [1, 2, 3, 4], "moe_ep": [1, 2, 3, 4, 8, 16, 32],
    "mode": ["engine", "llmapi"], "gpu": ["H100-80GB", "H200", "A100-80GB"], "precision": ["fp8", "bf16"],
}  # 5 x 5 x 11 x 4 x 7 x 2 x 3 x 2 = 92,400 specs
# The rules that read the TensorRT-LLM pin and the step size, on pp=1 layouts of every tp above plus tp 5
# (splits nothing evenly) and 128 (one head per rank: q_b_proj's 192 rows cut a scale block), and every
# moe_ep above: 13 x 7 x 2 x 2 x 2 x 2 x 3 = 4,368 more specs.
PIN_GRID = {
    "tp": [*GRID["tp"], 5, 128], "moe_ep": GRID["moe_ep"], "mode": GRID["mode"], "gpu": ["H200", "A100-80GB"],
    "precision": GRID["precision"], "commit": ["deepseek", "0321f71e9559906096211de557d0db52d840615a"],
    "step": [(8192, False), (1024, True), (1024, False)],  # (max_num_tokens, enable_chunked_context)
}

# DeepSeek-V3's config.json (deepseek-ai/DeepSeek-V3, as in dsv3ctl/data/deepseek_v3_config.json), written out
# here so the rules below do not read the planner's model object.
V3 = dict(hidden=7168, layers=61, dense_layers=3, dense_inter=18432, moe_inter=2048, experts=256, shared=1,
          heads=128, q_lora=1536, kv_lora=512, nope=128, rope=64, v_head=128, vocab=129280, top_k=8)
SM = {"H100-80GB": 90, "H200": 90, "A100-80GB": 80}  # NVIDIA data sheets: Hopper sm_90, Ampere A100 sm_80
# Engine-mode conversions each TensorRT-LLM source lacks, read in its source: 0321f71e (yingcanw/TensorRT-LLM,
# examples/deepseek_v3/convert_checkpoint.py:30-145 has no --use_fp8_weights; models/deepseek_v2/config.py:168
# fp8_format=False) and 130232d9 (NVIDIA/TensorRT-LLM, same parser). The deepseek branch has FP8 since PR #2719.
PIN_LACKS = {"0321f71e9559906096211de557d0db52d840615a": {"fp8"}, "130232d9e775ed7995914d2acca35b0c73a94e6f": {"fp8"}}


def _independent_weight_bytes(tp: int, pp: int, precision: str) -> float:
    """Bytes of weights on the most loaded GPU, in closed form from the config numbers above and the
    sharding stated in ``planner.ASSUMPTIONS`` (not from ``DeepSeekV3Config.tensors()``): FP8 = 1 byte per
    linear weight + a float32 per 128x128 block; norms, router, embeddings and lm_head BF16; bf16 = 2 bytes."""
    c = V3
    fp8 = precision == "fp8"

    def lin(out: int, inp: int, shard: int) -> float:
        if not fp8:
            return 2 * out * inp / shard
        return (out * inp + 4 * -(-out // 128) * -(-inp // 128)) / shard

    h, qd = c["hidden"], c["nope"] + c["rope"]
    attn = (lin(c["q_lora"], h, 1) + lin(c["kv_lora"] + c["rope"], h, 1)  # q_a, kv_a: replicated
            + lin(c["heads"] * qd, c["q_lora"], tp) + lin(c["heads"] * (c["nope"] + c["v_head"]), c["kv_lora"], tp)
            + lin(h, c["heads"] * c["v_head"], tp)
            + 2 * (2 * h + c["q_lora"] + c["kv_lora"]))  # four RMSNorm weights, BF16, replicated
    mlp = lambda inter: 2 * lin(inter, h, tp) + lin(h, inter, tp)  # noqa: E731  gate, up, down
    dense = attn + mlp(c["dense_inter"])
    moe = attn + (c["experts"] + c["shared"]) * mlp(c["moe_inter"]) + 2 * c["experts"] * h + 4 * c["experts"]
    embed = 2 * c["vocab"] * h  # replicated (use_parallel_embedding off)
    head = 2 * c["vocab"] * h / tp + 2 * h  # lm_head over tp, + the final norm
    sizes = [c["layers"] // pp + (1 if i < c["layers"] % pp else 0) for i in range(pp)]
    stages, first = [], 0
    for i, n in enumerate(sizes):
        layers = range(first, first + n)
        first += n
        b = sum(dense if k < c["dense_layers"] else moe for k in layers)
        b += (embed if i == 0 else 0) + (head if i == pp - 1 else 0)
        stages.append((b, n))
    return max(stages)


def _independent_activation_bytes(tp: int, max_num_tokens: int = 8192, batch: int = 4) -> int:
    """The activation estimate of ``planner.ASSUMPTIONS``, spelled out (default serving values)."""
    c = V3
    return (3 * 1024**3 + max_num_tokens * c["hidden"] * 2 * 10
            + max_num_tokens * c["top_k"] * (c["hidden"] + 2 * c["moe_inter"] // tp) * 2
            + max_num_tokens * (c["heads"] // tp) * 3 * (c["nope"] + c["rope"]) * 2 + batch * c["vocab"] * 4)


def independent_failures(nodes, gpus_per_node, tp, pp, moe_ep, mode, gpu, precision, commit="deepseek",
                         max_num_tokens=8192, max_input_len=2048, chunked=False) -> tuple[set[str], float]:
    """The rules a spec must fail, from the sources, independent of the planner's code:

    - ``world_size``: nodes x gpus_per_node = tp x pp (TensorRT-LLM ``Mapping``);
    - ``tp_divides_heads``: tp | 128 heads; ``moe_ep_divides_tp``: moe_ep | tp; ``moe_ep_divides_experts``:
      moe_ep | 256 routed experts;
    - engine mode: ``engine_pp`` pp = 1; ``engine_hopper`` SM90;
    - ``fp8_sm``: fp8 needs SM >= 89;
    - memory (only sized once the first three hold): ``memory_weights`` weights + activations > GPU memory;
      else ``memory_kv_cache`` when batch x seq_len tokens x 70,272 B x (layers on the GPU / 61) exceed
      ``kv_cache_free_gpu_mem_fraction`` (0.9) of what is left;
    - engine mode, the pinned TensorRT-LLM source (:data:`PIN_LACKS`): ``trtllm_commit_capability`` when the
      commit lacks the precision's conversion;
    - engine mode, the converter's splits (deepseek branch @ 0321f71e ``models/deepseek_v2/convert.py``,
      ``torch.chunk`` over tp): tp divides q_b_proj's 128 x (128 + 64) rows, kv_b_proj's 128 x (128 + 128)
      rows, o_proj's 128 x 128 columns, the dense MLP's 18,432 and the shared expert's 1 x 2,048
      (``tp_split_*``); once moe_ep | tp (moe_tp = tp / moe_ep a whole number): moe_tp divides 2,048
      (``moe_tp_divides_moe_inter``, ``layers/moe.py``), and ``moe_mixed_tp_ep`` when 1 < moe_ep < tp at a
      commit whose converter was read (the branch pin only warns);
    - engine mode, fp8 (128 x 128 ``weight_scale_inv`` blocks, DeepSeek-V3 README_WEIGHTS.md): every split
      above that divides evenly leaves a multiple of 128 per rank (``fp8_block_*``), and so do the routed
      experts' 2,048 / moe_tp rows (``fp8_block_routed_experts``);
    - engine mode on Hopper: ``mla_chunked_context`` when chunked context would be needed
      (max_num_tokens < max_input_len with enable_chunked_context; NVIDIA/TensorRT-LLM#3486);
      ``max_num_tokens``: without chunked context a whole prompt (max_input_len) must fit one step.

    Returns ``(names, margin)``: ``margin`` is the memory verdict's distance from its threshold as a
    fraction of GPU memory, so that the caller can skip the few specs where two honest estimates may
    round differently. To add a rule (a converter shape rule, say), add one ``if`` here with its source
    and its name to ``RULES``; the grid test then checks the planner against it both ways."""
    from dsv3ctl.core.hardware import GPUS

    fail = set()
    if nodes * gpus_per_node != tp * pp:
        fail.add("world_size")
    if V3["heads"] % tp:
        fail.add("tp_divides_heads")
    if tp % moe_ep:
        fail.add("moe_ep_divides_tp")
    if V3["experts"] % moe_ep:
        fail.add("moe_ep_divides_experts")
    if mode == "engine" and pp != 1:
        fail.add("engine_pp")
    if mode == "engine" and SM[gpu] != 90:
        fail.add("engine_hopper")
    if precision == "fp8" and SM[gpu] < 89:
        fail.add("fp8_sm")
    if mode == "engine" and precision in PIN_LACKS.get(commit, set()):
        fail.add("trtllm_commit_capability")
    c = V3
    splits = {"q_b_proj": c["heads"] * (c["nope"] + c["rope"]), "kv_b_proj": c["heads"] * (c["nope"] + c["v_head"]),
              "o_proj": c["heads"] * c["v_head"], "dense": c["dense_inter"], "shared": c["shared"] * c["moe_inter"]}
    if mode == "engine":
        fail |= {f"tp_split_{n}" for n, size in splits.items() if size % tp}
        if precision == "fp8":
            fail |= {f"fp8_block_{n}" for n, size in splits.items() if size % tp == 0 and (size // tp) % 128}
    if mode == "engine" and tp % moe_ep == 0:  # the rules on moe_tp = tp / moe_ep
        moe_tp = tp // moe_ep
        if c["moe_inter"] % moe_tp:
            fail.add("moe_tp_divides_moe_inter")
        if commit in PIN_LACKS and 1 < moe_ep < tp:  # the converters read at these commits
            fail.add("moe_mixed_tp_ep")
        if precision == "fp8" and c["moe_inter"] % moe_tp == 0 and (c["moe_inter"] // moe_tp) % 128:
            fail.add("fp8_block_routed_experts")
    if mode == "engine" and SM[gpu] == 90 and chunked and max_num_tokens < max_input_len:
        fail.add("mla_chunked_context")
    if not chunked and max_num_tokens < max_input_len:
        fail.add("max_num_tokens")
    margin = 1.0
    if not fail & {"world_size", "tp_divides_heads", "moe_ep_divides_tp"}:
        mem = GPUS[gpu].memory_bytes
        weights, layers = _independent_weight_bytes(tp, pp, precision)
        left = mem - weights - _independent_activation_bytes(tp, max_num_tokens)
        if left <= 0:
            fail.add("memory_weights")
            margin = -left / mem
        else:
            need = 4 * 4096 * (V3["kv_lora"] + V3["rope"]) * 2 * layers
            pool = 0.9 * left
            if need > pool:
                fail.add("memory_kv_cache")
            margin = abs(pool - need) / mem
    return fail, margin


@pytest.mark.slow
def test_every_layout_of_the_grid_agrees_with_independent_rules(monkeypatch):
    """Exact, both ways, over all 92,400 specs of :data:`GRID` (default serving values) and the 4,368 of
    :data:`PIN_GRID` (two TensorRT-LLM pins, three step sizes): the planner
    refuses a spec exactly when :func:`independent_failures` says it breaks a rule, with exactly those rule
    names, and each refusal names the field (its fixes are checked by the property tests below). A planner that refused everything, or
    accepted everything, or dropped one rule, fails here. Memory verdicts within 0.1 % of the GPU's memory
    of their threshold are not compared (the two estimates round per tensor vs in closed form); the test
    asserts that such specs are rare.

    ``_weights_per_gpu`` walks all ~90,000 checkpoint tensors (0.25 s per call), so it is memoized here on
    every spec field except the hardware and the node shape (what it reads today)."""
    import itertools

    from dsv3ctl.core import planner
    from dsv3ctl.core.model import DeepSeekV3Config

    model = DeepSeekV3Config.default()  # read config.json once, not 92,400 times

    real = planner._weights_per_gpu
    memo: dict[str, tuple[int, int]] = {}

    def memo_weights(sp, m):
        key = sp.model_dump_json(exclude={"hardware": True, "parallelism": {"nodes", "gpus_per_node"}})
        if key not in memo:
            memo[key] = real(sp, m)
        return memo[key]

    monkeypatch.setattr(planner, "_weights_per_gpu", memo_weights)
    def layouts():
        for values in itertools.product(*GRID.values()):
            yield dict(zip(GRID, values, strict=True))
        for values in itertools.product(*PIN_GRID.values()):
            v = dict(zip(PIN_GRID, values, strict=True))
            v["max_num_tokens"], v["chunked"] = v.pop("step")
            gpn = 2 if v["tp"] > 64 else 1  # nodes <= 64
            yield {"nodes": v["tp"] // gpn, "gpus_per_node": gpn, "pp": 1, **v}

    agree = close = accepted = 0
    disagreements = []
    for v in layouts():
        sp = spec(parallelism={k: v[k] for k in ("nodes", "gpus_per_node", "tp", "pp", "moe_ep")},
                  serving={"mode": v["mode"], "max_num_tokens": v.get("max_num_tokens", 8192),
                           "enable_chunked_context": v.get("chunked", False)},
                  hardware={"gpu": v["gpu"]}, model={"precision": v["precision"]},
                  image={"trtllm_commit": v.get("commit", "deepseek")})
        p = make_plan(sp, model, suggest=False)  # verdicts only: fixes are searched per refusal (tests below)
        expected, margin = independent_failures(**v)
        got = {c.name for c in p.errors}
        if margin < 0.001 and (expected ^ got) <= {"memory_weights", "memory_kv_cache"}:
            close += 1
            continue
        if got != expected:
            disagreements.append((v, sorted(expected), sorted(got)))
            continue
        agree += 1
        accepted += p.ok
        for c in p.errors:
            assert c.name in RULES and c.message, c.message
    assert not disagreements, f"{len(disagreements)} disagreements, first: {disagreements[:5]}"
    assert agree + close == 92_400 + 4_368 and close < 200, (agree, close)
    assert 100 < accepted < 92_400, accepted


def test_world_size_fix_is_always_concrete():
    p = make_plan(spec(parallelism={"tp": 12}))
    (err,) = [c for c in p.errors if c.name == "world_size"]
    assert "?" not in err.message
    # not "nodes=2 with gpus_per_node=6": that keeps tp=12, which still fails tp_divides_heads
    assert "use parallelism.tp=16" in err.message and "gpus_per_node=6" not in err.message, err.message


def test_max_seq_len_beyond_the_model_context():
    p = make_plan(spec(serving={"max_seq_len": 1_000_000}))
    (err,) = [c for c in p.errors if c.name == "max_seq_len"]
    assert "163840" in err.message and "use serving.max_seq_len=163840" in err.message
    # the KV check never suggests more than the model's context either
    kv = [c for c in p.errors if c.name == "memory_kv_cache"]
    for fix in (f for c in kv for f in c.fixes):
        assert fix.get("serving.max_seq_len", 0) <= 163840


@pytest.mark.parametrize(("sections", "check", "never"), [
    ({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 12}}, "world_size", "gpus_per_node=6"),
    ({"serving": {"max_seq_len": 200000}}, "memory_kv_cache", "max_seq_len=187"),
    ({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}}, "memory_weights", "precision=fp8"),
    ({"parallelism": {"nodes": 1, "gpus_per_node": 8, "tp": 8}, "hardware": {"gpu": "H200"},
      "model": {"precision": "bf16"}}, "memory_weights", "gpu=H200"),
    ({"parallelism": {"nodes": 3, "gpus_per_node": 8, "tp": 24}}, "tp_divides_heads", "nodes=3 with"),
])
def test_the_bad_suggestions_are_gone(sections, check, never):
    p = make_plan(spec(**sections))
    (c,) = [c for c in p.errors if c.name == check]
    assert c.fixes and never not in c.message, c.message
    for fix in c.fixes:
        assert make_plan(apply_fix(spec(**sections), fix)).ok, fix


bad = st.fixed_dictionaries({
    "parallelism": st.fixed_dictionaries({
        "nodes": st.sampled_from([1, 2, 3, 4]), "gpus_per_node": st.sampled_from([1, 2, 4, 6, 8]),
        "tp": st.sampled_from([1, 3, 4, 8, 12, 16, 24, 32, 40]), "pp": st.sampled_from([1, 2, 3]),
        "moe_ep": st.sampled_from([1, 2, 3, 8, 16])}),
    "serving": st.fixed_dictionaries({
        "mode": st.sampled_from(["engine", "llmapi"]), "max_seq_len": st.sampled_from([4096, 32768, 200000]),
        "max_batch_size": st.sampled_from([4, 64]), "max_num_tokens": st.sampled_from([1024, 8192])}),
    "hardware": st.fixed_dictionaries({"gpu": st.sampled_from(sorted(GPUS))}),
    "model": st.fixed_dictionaries({"precision": st.sampled_from(["fp8", "bf16"])}),
})


@settings(max_examples=200, deadline=None)
@given(sections=bad)
def test_every_suggested_fix_passes_plan(sections):
    """Generated (mostly bad) specs: every fix a failed check names, applied to the spec, makes the whole
    plan pass; the message names exactly those fixes."""
    s = spec(**sections)
    p = make_plan(s)
    for c in p.errors:
        assert c.fixes or "no change" in c.message, c.message
        assert c.message.count("; use ") == (1 if c.fixes else 0), c.message  # only verified fixes say "use"
        for fix in c.fixes:
            assert fix_text(fix) in c.message
            after = make_plan(apply_fix(s, fix))
            assert after.ok, (c.name, fix, [e.message for e in after.errors])


def test_moe_tp_is_derived_not_a_typo(tmp_path):
    from dsv3ctl.core.spec import load_spec

    f = tmp_path / "s.yaml"
    f.write_text("parallelism:\n  moe_tp: 4\n")
    with pytest.raises(SpecError, match=r"parallelism\.moe_tp: moe_tp is derived: tp / moe_ep") as e:
        load_spec(f)
    assert "did you mean" not in e.value.message


def test_an_empty_spec_file_is_refused(tmp_path):
    from dsv3ctl.core.spec import load_spec

    f = tmp_path / "empty.yaml"
    f.write_text("# nothing yet\n")
    with pytest.raises(SpecError, match="is empty") as e:
        load_spec(f)
    assert "dsv3ctl init" in (e.value.hint or "")


def test_failed_layout_reports_unknown_memory_not_free():
    j = make_plan(spec(parallelism={"nodes": 3, "gpus_per_node": 4, "tp": 12})).to_json()
    assert j["memory"]["per_gpu_gib"]["free"] is None and j["memory"]["per_gpu_gib"]["weights"] is None
    passing = make_plan(spec()).to_json()
    assert {c["severity"] for c in passing["checks"]} <= {"info", "warning"}


def test_partial_spec_keeps_plain_enum_values():
    """Defaults of a partial spec are plain strings ('engine'), never enum reprs ('Mode.engine')."""
    s = spec(deploy={"replicas": 1})
    assert type(s.serving.mode) is str and s.serving.mode == "engine"
    assert type(s.model.precision) is str and s.model.precision == "fp8"


# ------------------------------------------------------------------ converter shape rules (property tests)
import re as _re  # noqa: E402

from dsv3ctl.core.planner import FP8_BLOCK, converter_shape_checks, tp_splits  # noqa: E402
from dsv3ctl.core.spec import Spec  # noqa: E402


def _layout_spec(tp: int, ep: int, prec: str, commit: str, **serving) -> Spec:
    gpn = min(tp, 8)
    return Spec.model_validate({
        "parallelism": {"nodes": max(1, tp // gpn), "gpus_per_node": gpn, "tp": tp, "moe_ep": ep},
        "model": {"precision": prec}, "image": {"trtllm_commit": commit}, "hardware": {"gpu": "H200"},
        "serving": serving})


def _apply(spec: Spec, fix: str) -> Spec:
    """Apply a suggested 'parallelism.tp=X with nodes=N [and gpus_per_node=G]' / 'parallelism.moe_ep=E' /
    'max_num_tokens=N' to ``spec``."""
    d = spec.model_dump()
    if m := _re.search(r"parallelism\.tp=(\d+) with nodes=(\d+)(?: and gpus_per_node=(\d+))? and moe_ep=(\d+)",
                       fix):
        d["parallelism"].update(tp=int(m[1]), nodes=int(m[2]), moe_ep=int(m[4]))
        if m[3]:
            d["parallelism"]["gpus_per_node"] = int(m[3])
    elif m := _re.search(r"parallelism\.moe_ep=(\d+)", fix):
        d["parallelism"]["moe_ep"] = int(m[1])
    elif m := _re.search(r"max_num_tokens=(\d+)", fix):
        d["serving"]["max_num_tokens"] = int(m[1])
    else:
        raise AssertionError(f"no fix to apply in: {fix}")
    return Spec.model_validate(d)


_TPS = st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128])


@settings(max_examples=60, deadline=None)
@given(tp=_TPS, ep_i=st.integers(0, 7), prec=st.sampled_from(["fp8", "bf16"]),
       commit=st.sampled_from(["deepseek", "0321f71e9559906096211de557d0db52d840615a"]))
def test_converter_rules_hold_exactly_and_every_fix_passes(tp, ep_i, prec, commit):
    from dsv3ctl.core.model import DeepSeekV3Config as C

    m = C.default()
    eps = [d for d in range(1, tp + 1) if tp % d == 0]
    ep = eps[ep_i % len(eps)]
    spec = _layout_spec(tp, ep, prec, commit)
    checks = {c.name: c for c in converter_shape_checks(spec, m)}
    for name, (size, _w) in tp_splits(m).items():
        c = checks[f"tp_split_{name.split(' ')[0]}"]
        assert c.ok == (size % tp == 0)
        fb = checks.get(f"fp8_block_{name.split(' ')[0]}")
        assert (fb is not None) == (prec == "fp8" and size % tp == 0 and (size // tp) % FP8_BLOCK != 0)
    verified = commit != "deepseek"
    mixed = checks.get("moe_mixed_tp_ep")
    assert (mixed is not None) == (ep not in (1, tp))
    if mixed is not None:
        assert mixed.ok == (not verified) and mixed.severity == ("error" if verified else "warning")
    assert checks["moe_tp_divides_moe_inter"].ok == (m.moe_intermediate % (tp // ep) == 0)
    for c in checks.values():
        if c.ok:
            continue
        assert "passes with " in c.message and "parallelism." in c.message  # names the field and an alternative
        fix = c.message.rsplit("passes with ", 1)[1]
        if "parallelism." not in fix:
            continue  # model.precision: bf16 (only when no tp works for fp8)
        fixed = _apply(spec, fix)
        after = {x.name: x for x in converter_shape_checks(fixed, m)}
        assert after.get(c.name) is None or after[c.name].ok, (c.message, after[c.name].message)
        assert all(x.ok for x in after.values()), [x.message for x in after.values() if not x.ok]


@settings(max_examples=40, deadline=None)
@given(mil=st.integers(1, 8192), mnt=st.integers(1, 16384), mode=st.sampled_from(["engine", "llmapi"]),
       gpu=st.sampled_from(["H200", "H100-80GB", "A100-80GB"]))
def test_mla_chunked_context_on_hopper(mil, mnt, mode, gpu):
    from dsv3ctl.core.hardware import GPUS
    from dsv3ctl.core.model import DeepSeekV3Config as C

    spec = Spec.model_validate({"serving": {"mode": mode, "enable_chunked_context": True, "max_input_len": mil,
                                            "max_seq_len": mil + 1, "max_num_tokens": mnt},
                                "hardware": {"gpu": gpu}, "parallelism": {"nodes": 2, "gpus_per_node": 8, "tp": 16}})
    c = next((x for x in converter_shape_checks(spec, C.default()) if x.name == "mla_chunked_context"), None)
    hopper = GPUS[gpu].sm == 90
    assert (c is not None) == (hopper and mnt < mil)
    if c is not None:
        assert c.ok == (mode != "engine") and "#3486" in c.message
        fixed = _apply(spec, c.message.rsplit("passes with ", 1)[1])
        assert not [x for x in converter_shape_checks(fixed, C.default()) if x.name == "mla_chunked_context"]


def test_fp8_tp32_dense_layers_cut_scale_blocks_and_bf16_does_not():
    """18432 / 32 = 576 rows per rank: 4.5 blocks of 128 (FP8 fails, BF16 passes): why the README converts
    FP8 at tp 8/16 and BF16 at tp 32."""
    from dsv3ctl.core.model import DeepSeekV3Config as C

    f = {c.name: c for c in converter_shape_checks(_layout_spec(32, 1, "fp8", "deepseek"), C.default())}
    assert not f["fp8_block_dense"].ok and "parallelism.tp=16" in f["fp8_block_dense"].message
    b = {c.name: c for c in converter_shape_checks(_layout_spec(32, 1, "bf16", "deepseek"), C.default())}
    assert all(c.ok for c in b.values())


def test_plan_info_lists_what_the_platform_preset_set():
    p = make_plan(spec(deploy={"platform": "eks", "nccl": {"extra_env": {"FI_PROVIDER": "efa"}}}))
    info = next(c for c in p.checks if c.name == "platform")
    assert info.ok and info.severity == "info"
    assert 'deploy.rdma.resource="vpc.amazonaws.com/efa" (https://docs.aws.amazon.com/eks/' in info.message
    assert "deploy.nccl.extra_env[FI_EFA_USE_DEVICE_RDMA]=\"1\" (github.com/aws-samples/" in info.message
    # a key the spec sets itself is not the preset's: listed as kept, not as set
    assert "extra_env[FI_PROVIDER]=" not in info.message and "kept from the spec: deploy.nccl.extra_env[FI_PROVIDER]" \
        in info.message
    # the rdma check sees the preset's resource, as the chart values do
    assert "vpc.amazonaws.com/efa" in next(c for c in p.checks if c.name == "rdma").message
    assert any(c.name == "platform_fabric" and c.severity == "warning" for c in p.checks)
    assert not any(c.name == "platform_fabric" for c in make_plan(spec(deploy={"platform": "eks"}, launch={
        "fabric_min_busbw_gbps": 800})).checks)
    generic = next(c for c in make_plan(spec()).checks if c.name == "platform")
    assert generic.message == "deploy.platform=generic: no preset keys"
    assert not any(c.name in ("platform_notes", "platform_fabric") for c in make_plan(spec()).checks)
