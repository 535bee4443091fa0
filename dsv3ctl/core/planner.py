"""The planner: from a validated :class:`~dsv3ctl.core.spec.Spec` and the model's config.json, check the
parallel layout against DeepSeek-V3 and TensorRT-LLM, and size memory per GPU.

Rules and their sources:
- world size = nodes x gpus_per_node = tp x pp; moe_tp x moe_ep = tp (TensorRT-LLM ``Mapping``,
  ``tensorrt_llm/mapping.py`` on the deepseek branch @ 0321f71e: ValueError otherwise).
- tp divides the 128 attention heads and the MoE intermediate sizes (TP splits use ``torch.chunk`` on
  heads, ``models/deepseek_v2/convert.py``); moe_ep divides the 256 routed experts (``ep_experts``).
- engine mode: pp = 1, because ``pp_layers`` gives each stage ``61 // pp`` layers and silently drops the
  rest (61 is prime); Hopper only, because the MLA kernel of the deepseek branch is SM90-only.
- FP8 weights need SM >= 89 (FP8 tensor cores: Ada/Hopper and newer).
- fp16 gets a warning: TensorRT-LLM's DeepSeek-V3 README (examples/deepseek_v3/README.md on the deepseek branch) uses BF16 (DeepSeek-V3 was trained in BF16/FP8, FP16 can overflow).
- engine mode: ``image.trtllm_commit`` must be able to convert the precision (:func:`trtllm_pin_checks`,
  table ``dsv3ctl/data/trtllm_commits.json``), and the converter's split rules hold: every tp-split weight
  divides evenly, moe_tp divides moe_intermediate_size, no mixed moe_tp x moe_ep at 0321f71e, FP8 slices
  whole 128x128 scale blocks, and on Hopper max_num_tokens covers max_input_len (no chunked MLA context)
  (:func:`converter_shape_checks`, each rule's source in its docstring).

Memory model (per GPU, bytes; every assumption stated in :data:`ASSUMPTIONS`): weights by dtype and by
sharding, an activation/workspace estimate, and the MLA KV cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dsv3ctl.core.hardware import GIB, GPUS
from dsv3ctl.core.model import DTYPE_BYTES, DeepSeekV3Config
from dsv3ctl.core.spec import Spec
from dsv3ctl.errors import SpecError

RUNTIME_OVERHEAD_BYTES = 3 * GIB
ACTIVATION_BUFFERS = 10  # hidden-size activation buffers live at once per token in one engine step

ASSUMPTIONS = [
    "weights: TensorRT-LLM shards q_b_proj, kv_b_proj, o_proj, the dense MLP, the shared experts and "
    "lm_head over tp, and routed experts over moe_tp x moe_ep; q_a_proj, kv_a_proj_with_mqa, norms, the "
    "router and embed_tokens are replicated on every rank (use_parallel_embedding off, the convert default)",
    "weights: fp8 keeps linear weights in 1 byte plus float32 128x128 block scales; embeddings, norms, "
    "router and lm_head stay BF16 (the released checkpoint's layout); bf16/fp16 store 2 bytes everywhere",
    "weights: the MTP layer is loaded only in llmapi mode with serving.mtp_layers > 0 (the engine "
    "converter does not convert it); attention weights are replicated when enable_attention_dp is on",
    "kv cache: MLA stores the 512-d latent plus the 64-d RoPE key per layer and token in BF16, and every tp "
    "rank holds the full latent of its pipeline stage's layers (one KV head cannot be split)",
    f"activations: {RUNTIME_OVERHEAD_BYTES // GIB} GiB fixed (CUDA context, NCCL buffers, cuBLAS/TensorRT "
    f"workspace, allocator slack) + max_num_tokens x hidden x 2 B x {ACTIVATION_BUFFERS} buffers + MoE "
    "permutation buffers (max_num_tokens x top_k x (hidden + 2 x moe_intermediate/moe_tp) x 2 B) + "
    "context attention (max_num_tokens x heads/tp x 3 x 192 x 2 B) + FP32 logits (batch x beam x vocab x 4 B)",
    "kv pool: TensorRT-LLM gives the KV cache kv_cache_free_gpu_mem_fraction of the memory left after "
    "weights and activations",
]


@dataclass
class Check:
    """One rule's result. ``fixes``: for a failed check, the changes (dotted spec key -> value) that
    :func:`make_plan` verified: with any one of them applied the whole plan passes."""

    name: str
    ok: bool
    message: str
    severity: str = "error"  # error | warning | info
    fixes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    """The planner's result; :meth:`to_json` gives the keys other tools read (see the issue's list)."""

    spec: Spec
    model: DeepSeekV3Config
    world_size: int
    checks: list[Check] = field(default_factory=list)
    weights_bytes: int = 0
    activation_bytes: int = 0
    kv_bytes_per_token: int = 0
    kv_bytes_per_token_per_gpu: int = 0
    kv_required_bytes: int = 0
    kv_pool_bytes: int = 0
    gpu_bytes: int = 0
    layers_per_gpu: int = 0
    suggestion: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def errors(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def free_bytes(self) -> int:
        return self.gpu_bytes - self.weights_bytes - self.activation_bytes - self.kv_required_bytes

    @property
    def kv_capacity_tokens(self) -> int:
        return max(0, self.kv_pool_bytes // max(1, self.kv_bytes_per_token_per_gpu))

    def to_json(self) -> dict[str, Any]:
        s, m = self.spec, self.model
        g = lambda b: round(b / GIB, 2)  # noqa: E731
        return {
            "model": s.model.repo,
            "mode": s.serving.mode,
            "precision": s.model.precision,
            "gpu": s.hardware.gpu,
            "world_size": self.world_size,
            "parallelism": {
                "nodes": s.parallelism.nodes, "gpus_per_node": s.parallelism.gpus_per_node,
                "tp": s.parallelism.tp, "pp": s.parallelism.pp,
                "moe_tp": s.parallelism.moe_tp, "moe_ep": s.parallelism.moe_ep,
            },
            "params": {
                "total": m.params_checkpoint, "main": m.params_main, "mtp": m.params_mtp,
                "activated": m.params_activated,
            },
            "tensors": {
                "checkpoint_total": m.checkpoint_tensor_count("fp8" if s.model.precision == "fp8" else "bf16"),
                "checkpoint_bytes": m.checkpoint_bytes("fp8" if s.model.precision == "fp8" else "bf16"),
            },
            "memory": {
                # null when the layout failed before memory could be sized (not "fits with everything free")
                "per_gpu_gib": {
                    "total": g(self.gpu_bytes),
                    **{k: (g(v) if self.weights_bytes else None) for k, v in (
                        ("weights", self.weights_bytes), ("activations", self.activation_bytes),
                        ("kv_cache", self.kv_required_bytes), ("kv_pool", self.kv_pool_bytes),
                        ("free", self.free_bytes))},
                },
                "layers_per_gpu": self.layers_per_gpu,
            },
            "kv_cache": {
                "bytes_per_token": self.kv_bytes_per_token,
                "bytes_per_token_per_gpu": self.kv_bytes_per_token_per_gpu,
                "required_tokens": s.serving.max_batch_size * s.serving.max_beam_width * s.serving.max_seq_len,
                "capacity_tokens": self.kv_capacity_tokens,
            },
            "suggestion": self.suggestion,
            "checks": [{**asdict(c), "severity": c.severity if not c.ok or c.severity == "warning" else "info"}
                       for c in self.checks],
            "assumptions": ASSUMPTIONS,
        }


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _layout_checks(spec: Spec, m: DeepSeekV3Config) -> list[Check]:
    p, mode = spec.parallelism, spec.serving.mode
    gpu = GPUS[spec.hardware.gpu]
    out: list[Check] = []
    ws, tpp = p.world_size, p.tp * p.pp
    out.append(Check(
        "world_size", ws == tpp,
        f"world size nodes x gpus_per_node = {p.nodes} x {p.gpus_per_node} = {ws} equals tp x pp = {tpp}" if ws == tpp
        else f"parallelism.tp={p.tp}, pp={p.pp}: tp x pp = {tpp} must equal nodes x gpus_per_node = {ws} "
             f"({p.nodes} x {p.gpus_per_node})",
    ))
    heads_ok = m.heads % p.tp == 0
    out.append(Check(
        "tp_divides_heads", heads_ok,
        f"tp={p.tp} divides the {m.heads} attention heads" if heads_ok
        else f"parallelism.tp={p.tp} does not divide the {m.heads} attention heads (tp is one of "
             f"{', '.join(map(str, _divisors(m.heads)))})",
    ))
    ep_tp_ok = p.tp % p.moe_ep == 0
    out.append(Check(
        "moe_ep_divides_tp", ep_tp_ok,
        f"moe_tp x moe_ep = {p.moe_tp} x {p.moe_ep} = tp" if ep_tp_ok
        else f"parallelism.moe_ep={p.moe_ep} must divide tp={p.tp} (moe_tp x moe_ep = tp)",
    ))
    ep_ok = m.experts % p.moe_ep == 0
    out.append(Check(
        "moe_ep_divides_experts", ep_ok,
        f"moe_ep={p.moe_ep} divides the {m.experts} routed experts" if ep_ok
        else f"parallelism.moe_ep={p.moe_ep} does not divide the {m.experts} routed experts",
    ))
    if mode == "engine":
        out.append(Check(
            "engine_pp", p.pp == 1,
            "engine mode with pp=1" if p.pp == 1
            else f"parallelism.pp={p.pp}: engine mode needs pp=1, because TensorRT-LLM's layer splitter gives each "
                 f"stage {m.layers} // pp layers and silently drops {m.layers % p.pp} of the {m.layers}",
        ))
        out.append(Check(
            "engine_hopper", gpu.sm == 90,
            f"{gpu.name} is Hopper (SM90), which the MLA kernel of the deepseek branch needs" if gpu.sm == 90
            else f"hardware.gpu={gpu.name} (SM{gpu.sm}): engine mode needs Hopper (SM90) for the deepseek branch's "
                 "MLA kernel",
        ))
        if spec.serving.mtp_layers:
            out.append(Check("engine_mtp", True, "serving.mtp_layers is ignored in engine mode (the converter "
                                                 "does not convert the MTP layer)", "warning"))
    elif p.pp > 1 and m.layers % p.pp:
        out.append(Check("pp_uneven", True, f"pp={p.pp} splits {m.layers} layers unevenly; the largest stage "
                                            f"holds {-(-m.layers // p.pp)} layers", "warning"))
    prec = spec.model.precision
    if prec == "fp8":
        ok = gpu.sm >= 89
        out.append(Check(
            "fp8_sm", ok, f"FP8 weights on SM{gpu.sm}" if ok
            else f"model.precision=fp8 needs SM >= 89 (FP8 tensor cores) but {gpu.name} is SM{gpu.sm} (bf16 "
                 "weights come from `dsv3ctl weights cast-bf16`)",
        ))
    if prec == "fp16":
        out.append(Check("fp16", True, "model.precision=fp16: bf16 is what TensorRT-LLM's DeepSeek-V3 README uses (DeepSeek-V3 activations can "
                                       "overflow FP16); use bf16 unless you have measured fp16", "warning"))
    s = spec.serving
    if s.max_seq_len > m.max_position_embeddings:
        out.append(Check(
            "max_seq_len", False,
            f"serving.max_seq_len={s.max_seq_len} exceeds the model's context of {m.max_position_embeddings} tokens "
            "(max_position_embeddings in config.json, YaRN-extended)",
        ))
    if not s.enable_chunked_context and s.max_num_tokens < s.max_input_len:
        out.append(Check(
            "max_num_tokens", False,
            f"serving.max_num_tokens={s.max_num_tokens} is smaller than max_input_len={s.max_input_len}, so a "
            "full prompt cannot run in one step",
        ))
    return out


_WEIGHTS: dict[tuple[Any, ...], tuple[DeepSeekV3Config, tuple[int, int]]] = {}


def _weights_per_gpu(spec: Spec, m: DeepSeekV3Config) -> tuple[int, int]:
    """(bytes on the most loaded GPU, layers on it); memoized per model and sharding (the fix search of
    :func:`make_plan` re-plans many layouts of one model)."""
    p, s = spec.parallelism, spec.serving
    key = (id(m), spec.model.precision, max(1, p.tp), max(1, p.pp), s.mode == "llmapi" and s.enable_attention_dp,
           s.mode == "llmapi" and s.mtp_layers > 0)
    hit = _WEIGHTS.get(key)
    if hit is not None and hit[0] is m:
        return hit[1]
    out = _weights_uncached(m, *key[1:])
    _WEIGHTS[key] = (m, out)
    return out


_GROUPS: dict[tuple[Any, ...], tuple[DeepSeekV3Config, dict[tuple[int | None, str, int], int]]] = {}


def _tensor_groups(m: DeepSeekV3Config, precision: str, with_mtp: bool) -> dict[tuple[int | None, str, int], int]:
    """How many checkpoint tensors there are of each (layer, kind, bytes); a scale counts as the kind of
    the weight it scales. The same sums as walking every tensor, computed once per model and dtype."""
    key = (id(m), precision, with_mtp)
    hit = _GROUPS.get(key)
    if hit is not None and hit[0] is m:
        return hit[1]
    groups: dict[tuple[int | None, str, int], int] = {}
    weight_kind: dict[str, str] = {}
    for t in m.tensors(precision, include_mtp=with_mtp):
        if t.kind == "scale":
            kind = weight_kind.get(t.name.removesuffix("_scale_inv"), "attn_replicated")
        else:
            kind = t.kind
            weight_kind[t.name] = kind
        g = (t.layer, kind, t.nbytes)
        groups[g] = groups.get(g, 0) + 1
    _GROUPS[key] = (m, groups)
    return groups


def _weights_uncached(m: DeepSeekV3Config, precision: str, tp: int, pp: int, attn_dp: bool,
                      with_mtp: bool) -> tuple[int, int]:
    n_layers = m.layers
    # stage boundaries: the first stages take one more layer when uneven
    per_stage = [n_layers // pp + (1 if i < n_layers % pp else 0) for i in range(pp)]
    bounds, start = [], 0
    for n in per_stage:
        bounds.append((start, start + n))
        start += n

    def shard(kind: str) -> int:
        if kind in ("attn",):
            return 1 if attn_dp else tp
        if kind in ("head", "dense_mlp", "expert", "shared_expert"):
            return tp
        return 1

    stage_bytes = [0] * pp
    for (layer, kind, nbytes), count in _tensor_groups(m, precision, with_mtp).items():
        if layer is None:
            stage = 0 if kind == "embed" else pp - 1
        elif layer >= m.layers:
            stage = pp - 1
        else:
            stage = next(i for i, (a, b) in enumerate(bounds) if a <= layer < b)
        stage_bytes[stage] += count * -(-nbytes // shard(kind))
    worst = max(range(pp), key=lambda i: stage_bytes[i])
    return stage_bytes[worst], per_stage[worst] + (m.mtp_layers if with_mtp and worst == pp - 1 else 0)


def _activation_bytes(spec: Spec, m: DeepSeekV3Config) -> int:
    s, p = spec.serving, spec.parallelism
    tp = max(1, p.tp)
    tokens = s.max_num_tokens
    act = tokens * m.hidden * 2 * ACTIVATION_BUFFERS
    moe = tokens * m.top_k * (m.hidden + 2 * m.moe_intermediate // max(1, p.moe_tp)) * 2
    attn = tokens * max(1, m.heads // tp) * 3 * m.q_head_dim * 2
    logits = s.max_batch_size * s.max_beam_width * m.vocab * 4
    return RUNTIME_OVERHEAD_BYTES + act + moe + attn + logits


def make_plan(spec: Spec, model: DeepSeekV3Config | None = None, *, suggest: bool = True) -> Plan:
    """Check the layout and size memory. Never raises for a bad layout: failed checks are in
    ``plan.checks`` (use :func:`require_valid` to turn them into a SpecError). With ``suggest`` every
    failed check gets the fixes (:attr:`Check.fixes`) with which the whole plan passes, verified by
    planning them, and its message names them ("use ..."); without, messages state the rule only."""
    m = model or _default_model()
    plan = _plan(spec, m)
    if suggest and not plan.ok:
        _attach_fixes(plan, m)
    return plan


_MODEL: list[DeepSeekV3Config] = []


def _default_model() -> DeepSeekV3Config:
    if not _MODEL:
        _MODEL.append(DeepSeekV3Config.default())
    return _MODEL[0]


def _plan(spec: Spec, m: DeepSeekV3Config) -> Plan:
    p, s = spec.parallelism, spec.serving
    gpu = GPUS[spec.hardware.gpu]
    plan = Plan(spec=spec, model=m, world_size=p.world_size, gpu_bytes=gpu.memory_bytes)
    plan.checks = _layout_checks(spec, m) + trtllm_pin_checks(spec) + converter_shape_checks(spec, m)
    from dsv3ctl.core.fabric import plan_statement

    plan.checks.append(Check("fabric_check", True, plan_statement(spec), severity="info"))
    from dsv3ctl.core.deploy_rules import deploy_checks  # rules of the Kubernetes deployment (rdma, storage, ...)

    plan.checks += deploy_checks(spec)
    layout_ok = all(c.ok for c in plan.checks if c.name in ("world_size", "tp_divides_heads", "moe_ep_divides_tp"))
    if not layout_ok:
        return plan

    plan.weights_bytes, plan.layers_per_gpu = _weights_per_gpu(spec, m)
    plan.activation_bytes = _activation_bytes(spec, m)
    plan.kv_bytes_per_token = m.kv_bytes_per_token(DTYPE_BYTES["BF16"])
    plan.kv_bytes_per_token_per_gpu = m.kv_bytes_per_token(DTYPE_BYTES["BF16"], layers=plan.layers_per_gpu)
    required_tokens = s.max_batch_size * s.max_beam_width * s.max_seq_len
    plan.kv_required_bytes = required_tokens * plan.kv_bytes_per_token_per_gpu
    left = plan.gpu_bytes - plan.weights_bytes - plan.activation_bytes
    plan.kv_pool_bytes = max(0, int(left * s.kv_cache_free_gpu_mem_fraction))

    g = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
    if left <= 0:
        need = -(-(plan.weights_bytes + plan.activation_bytes) // gpu.memory_bytes)
        plan.checks.append(Check(
            "memory_weights", False,
            f"weights {g(plan.weights_bytes)} + activations {g(plan.activation_bytes)} per GPU exceed the "
            f"{g(plan.gpu_bytes)} of a {gpu.name} (about {need}x the GPUs would hold them)",
        ))
        return plan
    plan.checks.append(Check(
        "memory_weights", True,
        f"weights {g(plan.weights_bytes)} + activations {g(plan.activation_bytes)} of {g(plan.gpu_bytes)} per GPU",
    ))
    capacity = plan.kv_capacity_tokens
    if required_tokens <= capacity:
        plan.checks.append(Check(
            "memory_kv_cache", True,
            f"KV cache for max_batch_size x max_seq_len = {required_tokens} tokens needs {g(plan.kv_required_bytes)}"
            f"; the pool holds {capacity} tokens ({g(plan.kv_pool_bytes)})",
        ))
    else:
        per_seq = s.max_beam_width * s.max_seq_len
        best_batch = capacity // per_seq
        best_seq = min(capacity // max(1, s.max_batch_size * s.max_beam_width), m.max_position_embeddings)
        plan.suggestion = {"max_batch_size": best_batch, "max_seq_len": best_seq}
        plan.checks.append(Check(
            "memory_kv_cache", False,
            f"serving.max_batch_size={s.max_batch_size} x max_seq_len={s.max_seq_len} needs {required_tokens} KV "
            f"tokens ({g(plan.kv_required_bytes)} per GPU) but the pool holds {capacity}",
        ))
    return plan


# ------------------------------------------------------------------ the pinned TensorRT-LLM source
def trtllm_pin_checks(spec: Spec) -> list[Check]:
    """Whether ``image.trtllm_commit`` can convert ``model.precision`` in engine mode.

    Source: the table ``dsv3ctl/data/trtllm_commits.json`` (:mod:`dsv3ctl.core.trtllm_pin`), e.g.
    deepseek branch @ 0321f71e ``examples/deepseek_v3/convert_checkpoint.py`` has no ``--use_fp8_weights``
    and ``tensorrt_llm/models/deepseek_v2/config.py:168`` hard-codes ``fp8_format=False``; FP8 weights
    came with PR #2719 (merged 2025-01-24). A commit the table does not know passes with a warning
    (``dsv3ctl convert`` probes the installed converter before it starts).
    """
    from dsv3ctl.core import trtllm_pin as pin

    im, prec, mode = spec.image, spec.model.precision, spec.serving.mode
    if mode != "engine":
        return []
    lack, known = pin.missing(im.trtllm_commit, prec, mode)
    if lack:
        alts = pin.good_refs(pin.needs(prec, mode))
        alt = f"image.trtllm_commit: {alts[0]}" if alts else "a deepseek-branch commit that contains PR #2719"
        others = "" if prec != "fp8" else " (or model.precision: bf16 after `dsv3ctl weights cast-bf16`)"
        return [Check(
            "trtllm_commit_capability", False,
            f"image.trtllm_commit={im.trtllm_commit[:12]} cannot convert model.precision={prec} in engine mode: it "
            f"lacks {', '.join(sorted(lack))} ({(known.provenance[0] if known else '')}); this rule passes with {alt}{others}",
        )]
    if known is None:
        return [Check("trtllm_commit_capability", True,
                      f"image.trtllm_commit={im.trtllm_commit[:12]} is not in dsv3ctl's table of known TensorRT-LLM "
                      f"commits; `dsv3ctl convert` checks the installed converter's flags before it starts",
                      severity="warning")]
    how = "read in its source" if known.verified_from_source else "per its README; the converter is probed at convert time"
    return [Check("trtllm_commit_capability", True,
                  f"image.trtllm_commit={im.trtllm_commit[:12]} converts {prec} ({how})")]


# ------------------------------------------------------------------ converter shape rules
#: FP8 block size of DeepSeek-V3's weights (config.json quantization_config.weight_block_size; deepseek-ai/
#: DeepSeek-V3 README_WEIGHTS.md): one float32 scale per 128x128 block of each FP8 linear weight.
FP8_BLOCK = 128


def tp_splits(m: DeepSeekV3Config) -> dict[str, tuple[int, str]]:
    """The dimension of each weight the engine converter splits over ``tp`` (elements) and where.

    Source: deepseek branch @ 0321f71e ``tensorrt_llm/models/deepseek_v2/convert.py`` (``split`` =
    ``torch.chunk``, line 77): q_b_proj and kv_b_proj on dim 0 (lines 198-209, per head), o_proj on dim 1
    (210-215), the dense MLP's up/gate on dim 0 and down on dim 1 (406-440), the shared expert likewise
    (357-376). q_a_proj / kv_a_proj_with_mqa (the MLA ranks q_lora_rank, kv_lora_rank) are not split."""
    return {
        "q_b_proj": (m.heads * m.q_head_dim, "convert.py:198 (dim 0)"),
        "kv_b_proj": (m.heads * (m.qk_nope + m.v_head), "convert.py:204 (dim 0)"),
        "o_proj": (m.heads * m.v_head, "convert.py:210 (dim 1)"),
        "dense mlp (intermediate_size)": (m.intermediate, "convert.py:406-440"),
        "shared expert": (m.moe_intermediate * m.shared_experts, "convert.py:357-376"),
    }


def _valid_moe_ep(spec: Spec, m: DeepSeekV3Config, mixed_ok: bool, tp: int | None = None) -> list[int]:
    """moe_ep values that satisfy every MoE rule for ``tp`` (default the spec's) and the precision."""
    tp, fp8 = tp or spec.parallelism.tp, spec.model.precision == "fp8"
    out = []
    for ep in _divisors(tp):
        mt = tp // ep
        if m.experts % ep or m.moe_intermediate % mt or (fp8 and (m.moe_intermediate // mt) % FP8_BLOCK):
            continue
        if not mixed_ok and ep not in (1, tp):
            continue
        out.append(ep)
    return out


def _valid_tp(spec: Spec, m: DeepSeekV3Config) -> list[int]:
    """tp values for which every tp split divides evenly (and is 128-aligned for FP8), with some moe_ep."""
    fp8 = spec.model.precision == "fp8"
    out = []
    for tp in _divisors(m.heads):
        sizes = [n for n, _ in tp_splits(m).values()]
        if any(n % tp or (fp8 and (n // tp) % FP8_BLOCK) for n in sizes):
            continue
        out.append(tp)
    return out


def _tp_fix(spec: Spec, tp: int, m: DeepSeekV3Config, mixed_ok: bool) -> str:
    """``parallelism.tp=X`` plus the nodes x gpus_per_node that give world size X x pp, and a moe_ep that
    passes the MoE rules at X."""
    p = spec.parallelism
    want = tp * p.pp
    eps = _valid_moe_ep(spec, m, mixed_ok, tp) or [1]
    ep = p.moe_ep if p.moe_ep in eps else min(eps, key=lambda e: (abs(e - p.moe_ep), e))
    if want % p.gpus_per_node == 0:
        where = f"nodes={want // p.gpus_per_node}"
    else:
        g = next(g for g in range(min(want, 16), 0, -1) if want % g == 0)
        where = f"nodes={want // g} and gpus_per_node={g}"
    return f"parallelism.tp={tp} with {where} and moe_ep={ep}"


def converter_shape_checks(spec: Spec, m: DeepSeekV3Config) -> list[Check]:
    """Divisibility rules the engine converter imposes on the layout (engine mode), and the FP8 block rule.

    - ``tp_split_<weight>``: every weight of :func:`tp_splits` divides evenly over ``tp`` (``torch.chunk``
      gives uneven pieces otherwise and the rank's reshape to ``size // tp`` fails; convert.py:77, 227-239).
    - ``moe_tp_divides_moe_inter``: moe_intermediate_size % moe_tp == 0 (``tensorrt_llm/layers/moe.py``
      @ 0321f71e lines 460-464 raise ValueError otherwise).
    - ``moe_mixed_tp_ep``: at 0321f71e the converter cuts routed experts into ``mapping.tp_size`` pieces
      (convert.py:297-308) while the MoE layer expects moe_intermediate / moe_tp (layers/moe.py:464), so
      moe_ep must be 1 (pure TP) or tp (pure EP) there; an error for commits whose source was read, a
      warning for the branch pin (its converter was not read).
    - ``fp8_block_<weight>``: with FP8 weights every per-rank slice of a split dimension is a multiple of the
      128-element scale block, so each rank keeps whole blocks and its own scales (DeepSeek-V3
      README_WEIGHTS.md, 128x128 ``weight_scale_inv``; split dims as above). An error in engine mode; a
      warning in llmapi mode (the PyTorch backend's loader was not read).
    - ``mla_ranks``: q_lora_rank and kv_lora_rank are not split (q_a_proj / kv_a_proj_with_mqa are
      replicated: fused_a, convert.py:141-174 and 255), so they impose no rule; reported for completeness.
    - ``mla_chunked_context``: on Hopper, chunked context is not supported for MLA (NVIDIA/TensorRT-LLM#3486;
      "Not supported: MLA chunked context support on Hopper" in docs/source/blogs/
      Best_perf_practice_on_DeepSeek-R1_in_TensorRT-LLM.md, replaced by PR #6929 in 2025-08), so
      max_num_tokens must cover max_input_len even with enable_chunked_context: an error in engine mode, a
      warning in llmapi mode (TensorRT-LLM 1.0 was not read for it).
    Each failed check names the field, the rule and an alternative that passes every rule here.
    """
    from dsv3ctl.core import trtllm_pin as pin

    p, s, prec, mode = spec.parallelism, spec.serving, spec.model.precision, spec.serving.mode
    gpu = GPUS[spec.hardware.gpu]
    out: list[Check] = []
    fp8 = prec == "fp8"
    known = pin.lookup(spec.image.trtllm_commit)
    verified = known is not None and known.verified_from_source
    # moe_tp = tp / moe_ep exists only when moe_ep divides tp (moe_ep_divides_tp fails otherwise): only the
    # rules that read moe_tp wait for it; the tp splits and the step size do not depend on it.
    moe_ok = p.tp % p.moe_ep == 0
    tps = _valid_tp(spec, m)
    alt_tp = (_tp_fix(spec, min(tps, key=lambda t: (abs(t - p.tp), -t)), m, not verified)
              if tps else "model.precision: bf16")
    tp_ok = p.tp in tps or mode != "engine"
    if mode == "engine":
        for name, (size, where) in tp_splits(m).items():
            ok = size % p.tp == 0
            out.append(Check(
                f"tp_split_{name.split(' ')[0]}", ok,
                f"{name}: {size} / tp={p.tp} = {size // p.tp if ok else size / p.tp:g} per rank ({where})" if ok
                else f"parallelism.tp={p.tp} does not divide the {size} of {name} that the converter splits over tp "
                     f"(deepseek branch convert.py, {where}); this rule passes with {alt_tp}",
            ))
    if mode == "engine" and moe_ok:
        mt = p.moe_tp
        ok = m.moe_intermediate % mt == 0
        eps = _valid_moe_ep(spec, m, mixed_ok=not verified)
        alt_ep = (f"parallelism.moe_ep={min(eps, key=lambda e: (abs(e - p.moe_ep), e))}" if eps and tp_ok else alt_tp)
        out.append(Check(
            "moe_tp_divides_moe_inter", ok,
            f"moe_intermediate_size {m.moe_intermediate} / moe_tp={mt} per rank (layers/moe.py:464)" if ok
            else f"parallelism.moe_ep={p.moe_ep} gives moe_tp={mt}, which does not divide moe_intermediate_size="
                 f"{m.moe_intermediate} (tensorrt_llm/layers/moe.py:460 raises); this rule passes with {alt_ep}",
        ))
        mixed = p.moe_ep not in (1, p.tp)
        if mixed:
            msg = (f"parallelism.moe_ep={p.moe_ep} with moe_tp={mt}: the converter at 0321f71e cuts routed experts "
                   f"into tp={p.tp} pieces (convert.py:297-308) but the MoE layer expects "
                   f"{m.moe_intermediate}/moe_tp={m.moe_intermediate // mt} (layers/moe.py:464); this rule passes with {alt_ep}")
            out.append(Check("moe_mixed_tp_ep", not verified, msg if verified else msg.replace(
                "; this rule passes with", " (the branch pin's converter was not read; check the converted shapes) - or it passes with"),
                "error" if verified else "warning"))
    if fp8:
        strict = mode == "engine"
        sizes = {n: sz for n, (sz, _w) in tp_splits(m).items()}
        if mode == "llmapi" and spec.serving.enable_attention_dp:
            sizes = {k: v for k, v in sizes.items() if k.split(" ")[0] not in ("q_b_proj", "kv_b_proj", "o_proj")}
        bad = [(n, sz) for n, sz in sizes.items() if sz % p.tp == 0 and (sz // p.tp) % FP8_BLOCK]
        routed = m.moe_intermediate // p.moe_tp if moe_ok and m.moe_intermediate % p.moe_tp == 0 else None
        for n, sz in bad:
            out.append(Check(
                f"fp8_block_{n.split(' ')[0]}", not strict,
                f"model.precision=fp8: {n} gives {sz // p.tp} rows per rank at tp={p.tp}, not a multiple of the "
                f"{FP8_BLOCK}x{FP8_BLOCK} scale block (README_WEIGHTS.md), so a rank's slice would cut a scale "
                f"block; this rule passes with {alt_tp} or model.precision: bf16 (`dsv3ctl weights cast-bf16`)",
                "error" if strict else "warning"))
        if routed is not None and routed % FP8_BLOCK:
            eps = _valid_moe_ep(spec, m, mixed_ok=not verified)
            alt = (f"parallelism.moe_ep={min(eps, key=lambda e: (abs(e - p.moe_ep), e))}" if eps and tp_ok
                   else alt_tp)
            out.append(Check(
                "fp8_block_routed_experts", not strict,
                f"model.precision=fp8: routed experts give {routed} intermediate rows per rank at moe_tp={p.moe_tp}, "
                f"not a multiple of the {FP8_BLOCK}-element scale block; this rule passes with {alt}",
                "error" if strict else "warning"))
    if mode == "engine":
        out.append(Check("mla_ranks", True, f"q_lora_rank={m.q_lora_rank} and kv_lora_rank={m.kv_lora_rank} are not "
                                            "split (q_a_proj / kv_a_proj_with_mqa are replicated on every rank)",
                         "info"))
    if gpu.sm == 90 and s.enable_chunked_context and s.max_num_tokens < s.max_input_len:
        strict = mode == "engine"
        out.append(Check(
            "mla_chunked_context", not strict,
            f"serving.max_num_tokens={s.max_num_tokens} < max_input_len={s.max_input_len} relies on chunked context, "
            f"which MLA does not support on Hopper ({gpu.name}; NVIDIA/TensorRT-LLM#3486); this rule passes with "
            f"max_num_tokens={s.max_input_len}",
            "error" if strict else "warning"))
    return out


#: Checks about the parallel layout itself (not the memory fit): what renderers refuse to render.
LAYOUT_CHECKS = frozenset({"world_size", "tp_divides_heads", "moe_ep_divides_tp", "moe_ep_divides_experts", "engine_pp"})


def require_layout(spec: Spec, what: str) -> Plan:
    """The plan of ``spec``; SpecError (exit 2) listing every failed layout check, with ``what`` saying
    who refuses ("the chart cannot deploy") and a hint to run ``dsv3ctl plan`` on the same spec."""
    plan = make_plan(spec)
    errors = [c.message for c in plan.checks if not c.ok and c.name in LAYOUT_CHECKS]
    if errors:
        raise SpecError(f"{what} this layout:\n" + "\n".join(errors), hint=f"`{spec.command('plan')}` shows every check")
    return plan


def require_valid(plan: Plan) -> Plan:
    """Raise SpecError (exit 2) listing every failed check; return the plan otherwise."""
    if not plan.ok:
        raise SpecError("\n".join(c.message for c in plan.errors))
    return plan


# ------------------------------------------------------------------------------------------ fixes
# Every fix a failed check suggests is verified: applied to the spec, the whole plan passes. Candidates come
# from the failed rule (:func:`_candidates`); a candidate that leaves other checks failing is completed with
# a candidate of the next failing check (up to _DEPTH changes deep), and kept only when the plan then passes.

Fix = dict[str, Any]
_DEPTH = 2
_PER_CHECK = 2  # fixes named per failed check
_TRIES = 16  # candidates tried per failed check


def apply_fix(spec: Spec, fix: Fix) -> Spec:
    """``spec`` with the dotted keys of ``fix`` set (``{"parallelism.tp": 16}``), validated again;
    pydantic's ValidationError when the result is not a valid spec. Keeps the spec's source file."""
    data = spec.model_dump()
    for dotted, value in fix.items():
        cur = data
        *path, last = dotted.split(".")
        for k in path:
            cur = cur[k]
        cur[last] = value
    new = Spec.model_validate(data)
    new._source = spec._source
    return new


def fix_text(fix: Fix) -> str:
    """``parallelism.tp=16 with parallelism.nodes=2``."""
    return " with ".join(f"{k}={v}" for k, v in fix.items())


def _layouts(spec: Spec, m: DeepSeekV3Config, *, grow: bool = False) -> list[Fix]:
    """Valid parallel layouts near the spec's (world size = tp x pp, tp divides the heads, moe_ep divides tp
    and the experts, pp = 1 in engine mode), nearest first: same GPUs per node, closest world size, fewest
    changed keys. ``grow``: only layouts with more GPUs than the spec's."""
    import math

    p, engine = spec.parallelism, spec.serving.mode == "engine"
    found: list[tuple[tuple[float, ...], Fix]] = []
    for gpn in dict.fromkeys((p.gpus_per_node, 8, 4, 2, 1)):
        for nodes in range(1, 65):
            ws = nodes * gpn
            if grow and ws <= p.world_size:
                continue
            for pp in dict.fromkeys((1,) if engine else (p.pp, 1)):
                if ws % pp or m.heads % (ws // pp):
                    continue
                tp = ws // pp
                eps = [d for d in _divisors(tp) if m.experts % d == 0]
                ep = p.moe_ep if p.moe_ep in eps else max(d for d in eps if d <= p.moe_ep) if any(
                    d <= p.moe_ep for d in eps) else 1
                new = {"nodes": nodes, "gpus_per_node": gpn, "tp": tp, "pp": pp, "moe_ep": ep}
                fix = {f"parallelism.{k}": v for k, v in new.items() if getattr(p, k) != v}
                if fix:
                    cost = (float(gpn != p.gpus_per_node), abs(math.log2(ws / p.world_size)), float(len(fix)), nodes)
                    found.append((cost, fix))
    found.sort(key=lambda x: x[0])
    return [f for _, f in found]


def _gpus(spec: Spec, *, more_memory: bool = False) -> list[Fix]:
    """Other GPU models that the spec's mode and precision can use (Hopper for engine mode, SM >= 89 for
    fp8), smallest memory first; ``more_memory``: only those larger than the spec's."""
    cur = GPUS[spec.hardware.gpu]
    ok = [g for g in GPUS.values() if g.name != cur.name
          and (spec.serving.mode != "engine" or g.sm == 90)
          and (spec.model.precision != "fp8" or g.sm >= 89)
          and (not more_memory or g.memory_bytes > cur.memory_bytes)]
    return [{"hardware.gpu": g.name} for g in sorted(ok, key=lambda g: g.memory_bytes)]


def _candidates(spec: Spec, plan: Plan, check: Check, m: DeepSeekV3Config) -> list[Fix]:
    """Changes that may make ``check`` pass, most specific first (verified by the caller)."""
    p, s, name = spec.parallelism, spec.serving, check.name
    if name == "moe_ep_divides_tp" or name == "moe_ep_divides_experts":
        eps = sorted((d for d in _divisors(p.tp) if m.experts % d == 0), key=lambda d: (abs(d - p.moe_ep), d))
        return [{"parallelism.moe_ep": d} for d in eps if d != p.moe_ep] + _layouts(spec, m)
    if name in ("world_size", "tp_divides_heads"):
        return _layouts(spec, m)
    if name == "storage_claim_name":
        return [{"deploy.storage.kind": "newClaim"}, {"deploy.storage.kind": "hostPath"}]
    if name == "shm_size":
        import math

        return [{"deploy.shm_size": f"{max(1, math.ceil(spec.launch.shm_min_gib))}Gi"}, {"deploy.shm_size": "64Gi"}]
    if name == "launch_paths":
        mount = spec.deploy.storage.mount_path.rstrip("/")
        return [{"launch.model_repository": f"{mount}/triton_model_repo", "launch.model_dir": f"{mount}/hf"},
                {"deploy.storage.mount_path": "/models", "launch.model_repository": "/models/triton_model_repo",
                 "launch.model_dir": "/models/hf"}]
    if name == "frontend_mode":
        return [{"serving.frontend": "tritonserver"}, {"serving.mode": "llmapi"}]
    if name == "ports":
        la, used = spec.launch, {spec.launch.http_port, spec.launch.grpc_port, spec.launch.metrics_port,
                                 spec.deploy.openai_port}
        ssh = next(x for x in range(2222, 65536) if x not in used)
        defaults = {"launch.http_port": 8000, "launch.grpc_port": 8001, "launch.metrics_port": 8002,
                    "deploy.openai_port": 8080, "launch.ssh_port": 2222}
        reset = {k: v for k, v in defaults.items()
                 if getattr(la if k.startswith("launch.") else spec.deploy, k.split(".")[1]) != v}
        return [{"launch.ssh_port": ssh}, reset] if reset else [{"launch.ssh_port": ssh}]
    if name == "trtllm_commit_capability":
        from dsv3ctl.core import trtllm_pin as pin

        refs = pin.good_refs(pin.needs(spec.model.precision, s.mode))
        return ([{"image.trtllm_commit": r} for r in refs] + [{"serving.mode": "llmapi"}]
                + [{"model.precision": "bf16"}] * (spec.model.precision != "bf16"))
    if name == "engine_pp":
        return _layouts(spec, m) + [{"serving.mode": "llmapi"}]
    if name == "engine_hopper":
        return _gpus(spec) + [{"serving.mode": "llmapi"}]
    if name == "fp8_sm":
        return [{"model.precision": "bf16"}, *_gpus(spec)]
    if name == "max_seq_len":
        top = m.max_position_embeddings
        return [{"serving.max_seq_len": top}, {"serving.max_seq_len": top, "serving.max_input_len": top // 2}]
    if name == "max_num_tokens":
        return [{"serving.max_num_tokens": s.max_input_len}, {"serving.enable_chunked_context": True}]
    if name == "memory_weights":
        fp8 = [{"model.precision": "fp8"}] if spec.model.precision != "fp8" and GPUS[spec.hardware.gpu].sm >= 89 else []
        return fp8 + _gpus(spec, more_memory=True) + _layouts(spec, m, grow=True)
    if name == "memory_kv_cache":
        out: list[Fix] = []
        if plan.suggestion.get("max_batch_size", 0) >= 1:
            out.append({"serving.max_batch_size": plan.suggestion["max_batch_size"]})
        if plan.suggestion.get("max_seq_len", 0) > s.max_input_len:
            out.append({"serving.max_seq_len": plan.suggestion["max_seq_len"]})
        return out + _gpus(spec, more_memory=True) + _layouts(spec, m, grow=True)
    # a rule without its own candidates: nearby layouts, other GPUs, the other serving mode
    return _layouts(spec, m) + _gpus(spec) + [{"serving.mode": "engine" if s.mode == "llmapi" else "llmapi"}]


def _try(spec: Spec, fix: Fix, m: DeepSeekV3Config, depth: int) -> Fix | None:
    """``fix``, or ``fix`` plus changes for what still fails, with which the whole plan of ``spec`` passes;
    None when no such completion is found within ``depth`` more changes."""
    from pydantic import ValidationError

    try:
        new = apply_fix(spec, fix)
    except ValidationError:
        return None
    plan = _plan(new, m)
    if plan.ok:
        return fix
    if depth == 0:
        return None
    first = plan.errors[0]
    for extra in _candidates(new, plan, first, m)[:4]:
        if set(extra) & set(fix):
            continue  # would undo the fix itself
        done = _try(spec, {**fix, **extra}, m, depth - 1)
        if done is not None:
            return done
    return None


def _attach_fixes(plan: Plan, m: DeepSeekV3Config) -> None:
    """Give each failed check of ``plan`` up to _PER_CHECK verified fixes and name them in its message."""
    spec = plan.spec
    for c in plan.errors:
        fixes: list[Fix] = []
        for cand in _candidates(spec, plan, c, m)[:_TRIES]:
            done = _try(spec, cand, m, _DEPTH)
            if done is not None and done not in fixes:
                fixes.append(done)
                if len(fixes) == 2 * _PER_CHECK:
                    break
        fixes = sorted(fixes, key=len)[:_PER_CHECK]  # stable: nearest first among equally small changes
        c.fixes = fixes
        c.message += ("; use " + ", or ".join(map(fix_text, fixes)) if fixes
                      else "; no change of up to three keys that passes every check was found")
