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
- fp16 gets a warning: the seed uses BF16 (DeepSeek-V3 was trained in BF16/FP8, FP16 can overflow).

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
    name: str
    ok: bool
    message: str
    severity: str = "error"  # error | warning | info


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


def _nearest(value: int, allowed: list[int]) -> str:
    """'8 or 16' for value 12 among the divisors of 128."""
    below = [a for a in allowed if a < value]
    above = [a for a in allowed if a > value]
    opts = ([str(below[-1])] if below else []) + ([str(above[0])] if above else [])
    return " or ".join(opts)


def _world_size_fixes(tp: int, pp: int, nodes: int, gpus_per_node: int, heads: int) -> list[str]:
    """Valid ways to make nodes x gpus_per_node = tp x pp: change tp (to a divisor of the heads), or the
    node count / GPUs per node (at most 8 per node)."""
    ws, tpp = nodes * gpus_per_node, tp * pp
    fixes = []
    if ws % pp == 0 and heads % (ws // pp) == 0:
        fixes.append(f"tp={ws // pp}" + (f" with pp={pp}" if pp > 1 else ""))
    if tpp % gpus_per_node == 0:
        fixes.append(f"nodes={tpp // gpus_per_node}")
    else:
        g = next((g for g in range(min(8, tpp), 0, -1) if tpp % g == 0), 1)
        fixes.append(f"nodes={tpp // g} with gpus_per_node={g}")
    return fixes


def _layout_checks(spec: Spec, m: DeepSeekV3Config) -> list[Check]:
    p, mode = spec.parallelism, spec.serving.mode
    gpu = GPUS[spec.hardware.gpu]
    out: list[Check] = []
    ws, tpp = p.world_size, p.tp * p.pp
    out.append(Check(
        "world_size", ws == tpp,
        f"world size nodes x gpus_per_node = {p.nodes} x {p.gpus_per_node} = {ws} equals tp x pp = {tpp}" if ws == tpp
        else f"parallelism.tp={p.tp}, pp={p.pp}: tp x pp = {tpp} must equal nodes x gpus_per_node = {ws}; "
             f"use {' or '.join(_world_size_fixes(p.tp, p.pp, p.nodes, p.gpus_per_node, m.heads))}",
    ))
    heads_ok = m.heads % p.tp == 0
    out.append(Check(
        "tp_divides_heads", heads_ok,
        f"tp={p.tp} divides the {m.heads} attention heads" if heads_ok
        else f"parallelism.tp={p.tp} does not divide the {m.heads} attention heads; use {_nearest(p.tp, _divisors(m.heads))}",
    ))
    ep_tp_ok = p.tp % p.moe_ep == 0
    out.append(Check(
        "moe_ep_divides_tp", ep_tp_ok,
        f"moe_tp x moe_ep = {p.moe_tp} x {p.moe_ep} = tp" if ep_tp_ok
        else f"parallelism.moe_ep={p.moe_ep} must divide tp={p.tp} (moe_tp x moe_ep = tp); "
             f"use {_nearest(p.moe_ep, _divisors(p.tp))}",
    ))
    ep_ok = m.experts % p.moe_ep == 0
    out.append(Check(
        "moe_ep_divides_experts", ep_ok,
        f"moe_ep={p.moe_ep} divides the {m.experts} routed experts" if ep_ok
        else f"parallelism.moe_ep={p.moe_ep} does not divide the {m.experts} routed experts; "
             f"use {_nearest(p.moe_ep, _divisors(m.experts))}",
    ))
    if mode == "engine":
        out.append(Check(
            "engine_pp", p.pp == 1,
            "engine mode with pp=1" if p.pp == 1
            else f"parallelism.pp={p.pp}: engine mode needs pp=1, because TensorRT-LLM's layer splitter gives each "
                 f"stage {m.layers} // pp layers and silently drops {m.layers % p.pp} of the {m.layers}; use pp=1 "
                 f"with tp={p.tp * p.pp}, or serving.mode=llmapi",
        ))
        out.append(Check(
            "engine_hopper", gpu.sm == 90,
            f"{gpu.name} is Hopper (SM90), which the MLA kernel of the deepseek branch needs" if gpu.sm == 90
            else f"hardware.gpu={gpu.name} (SM{gpu.sm}): engine mode needs Hopper (SM90) for the deepseek branch's "
                 "MLA kernel; use H100-80GB, H200 or H20, or serving.mode=llmapi",
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
            else f"model.precision=fp8 needs SM >= 89 (FP8 tensor cores) but {gpu.name} is SM{gpu.sm}; "
                 "use precision bf16 (cast with `dsv3ctl weights cast-bf16`) or an H100/H200",
        ))
    if prec == "fp16":
        out.append(Check("fp16", True, "model.precision=fp16: the seed prefers bf16 (DeepSeek-V3 activations can "
                                       "overflow FP16); use bf16 unless you have measured fp16", "warning"))
    s = spec.serving
    if s.max_seq_len > m.max_position_embeddings:
        out.append(Check(
            "max_seq_len", False,
            f"serving.max_seq_len={s.max_seq_len} exceeds the model's context of {m.max_position_embeddings} tokens "
            f"(max_position_embeddings in config.json, YaRN-extended); use max_seq_len={m.max_position_embeddings} "
            "or less",
        ))
    if not s.enable_chunked_context and s.max_num_tokens < s.max_input_len:
        out.append(Check(
            "max_num_tokens", False,
            f"serving.max_num_tokens={s.max_num_tokens} is smaller than max_input_len={s.max_input_len}, so a "
            f"full prompt cannot run in one step; use max_num_tokens={s.max_input_len} or enable_chunked_context",
        ))
    return out


def _weights_per_gpu(spec: Spec, m: DeepSeekV3Config) -> tuple[int, int]:
    """(bytes on the most loaded GPU, layers on it)."""
    p, s = spec.parallelism, spec.serving
    tp = max(1, p.tp)
    attn_dp = s.mode == "llmapi" and s.enable_attention_dp
    with_mtp = s.mode == "llmapi" and s.mtp_layers > 0
    precision = spec.model.precision
    n_layers = m.layers
    pp = max(1, p.pp)
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
    weight_kind: dict[str, str] = {}
    for t in m.tensors(precision, include_mtp=with_mtp):
        if t.kind == "scale":
            kind = weight_kind.get(t.name.removesuffix("_scale_inv"), "attn_replicated")
        else:
            kind = t.kind
            weight_kind[t.name] = kind
        if t.layer is None:
            stage = 0 if kind == "embed" else pp - 1
        elif t.layer >= m.layers:
            stage = pp - 1
        else:
            stage = next(i for i, (a, b) in enumerate(bounds) if a <= t.layer < b)
        stage_bytes[stage] += -(-t.nbytes // shard(kind))
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


def make_plan(spec: Spec, model: DeepSeekV3Config | None = None) -> Plan:
    """Check the layout and size memory. Never raises for a bad layout: failed checks are in
    ``plan.checks`` (use :func:`require_valid` to turn them into a SpecError)."""
    m = model or DeepSeekV3Config.default()
    p, s = spec.parallelism, spec.serving
    gpu = GPUS[spec.hardware.gpu]
    plan = Plan(spec=spec, model=m, world_size=p.world_size, gpu_bytes=gpu.memory_bytes)
    plan.checks = _layout_checks(spec, m)
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
            f"{g(plan.gpu_bytes)} of a {gpu.name}; use more GPUs (about {need}x the tp: "
            f"tp={p.tp * need} over nodes={p.nodes * need}), a larger GPU (H200), or fp8 weights",
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
        best_seq = capacity // max(1, s.max_batch_size * s.max_beam_width)
        plan.suggestion = {"max_batch_size": best_batch, "max_seq_len": best_seq}
        alt = []
        if best_batch >= 1:
            alt.append(f"max_batch_size={best_batch} (with max_seq_len={s.max_seq_len})")
        if best_seq > s.max_input_len:
            alt.append(f"max_seq_len={best_seq} (with max_batch_size={s.max_batch_size})")
        plan.checks.append(Check(
            "memory_kv_cache", False,
            f"serving.max_batch_size={s.max_batch_size} x max_seq_len={s.max_seq_len} needs {required_tokens} KV "
            f"tokens ({g(plan.kv_required_bytes)} per GPU) but the pool holds {capacity}; use "
            + (" or ".join(alt) if alt else "more GPUs"),
        ))
    return plan


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
