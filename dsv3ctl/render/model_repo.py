"""Triton model repository configs for DeepSeek-V3 on TensorRT-LLM, built as ``ModelConfig`` protobuf
messages (tritonclient ships Triton's ``model_config_pb2``) and written with protobuf's text format, so
no placeholder such as ``${...}`` can ever be left unfilled.

Engine mode (:func:`engine_configs`): ``ensemble``, ``preprocessing``, ``tensorrt_llm``,
``postprocessing``, ``tensorrt_llm_bls`` with the model names, tensor names and dtypes of
triton-inference-server/tensorrtllm_backend ``all_models/inflight_batcher_llm`` (tags v0.18.2 c575d8cb /
v0.19.0 c1e19638; the text path only: no multimodal, LoRA, prompt-tuning or encoder/decoder tensors), plus
one dsv3ctl extension input ``messages`` (a JSON list of chat messages). ``tensorrt_llm`` parameter keys
and meanings: tensorrtllm_backend ``docs/model_config.md`` @ v0.19.0 (``gpt_model_type`` and
``gpt_model_path`` mandatory; ``decoupled`` must be true for streaming).

llmapi mode (:func:`llmapi_files`): TensorRT-LLM's PyTorch backend through Triton's Python backend
(``tensorrt_llm/1/model.yaml``) and the same LLM API settings as ``extra-llm-api-options.yaml`` for
``trtllm-serve``; keys are those of :data:`LLMAPI_KEYS` for :data:`TRTLLM_LLMAPI_VERSION`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsv3ctl.core.spec import Spec
from dsv3ctl.errors import SpecError

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

ENGINE_MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
PYTHON_MODELS = ("preprocessing", "postprocessing", "tensorrt_llm_bls")
LLMAPI_MODEL = "tensorrt_llm"
DEFAULT_ENGINE_MOUNT = "/models/engines"
TOKENIZER_SUBDIR = "tokenizer"  # inside each Python model's version dir; tokenizer_dir is relative to it
EXTRA_OPTIONS_FILE = "extra-llm-api-options.yaml"
# The executor worker of the C++ backend (hard-coded in tensorrtllm_backend's tensorrt_llm/config.pbtxt).
EXECUTOR_WORKER_PATH = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"

#: TensorRT-LLM release whose ``LlmArgs`` keys the llmapi files match: 1.0 is the first release with the
#: PyTorch backend as default and the unified ``kv_cache_config`` / ``cuda_graph_config`` schema
#: (NVIDIA/TensorRT-LLM ``docs/source/release-notes.md`` @ 001eaece, 1.0 "BREAKING" notes; the image's
#: llmapi target pins an NGC tritonserver whose TensorRT-LLM is >= 1.0).
TRTLLM_LLMAPI_VERSION = "1.0.0"
def _llmapi_keys() -> dict[str, frozenset[str] | None]:
    """Top-level ``TorchLlmArgs`` keys -> the sub-keys of a nested config (None = not a nested config), from the
    contract data ``dsv3ctl/data/contracts/llm_args.json`` (read from TensorRT-LLM's ``llm_args.py``)."""
    from dsv3ctl.core import contracts

    keys: dict[str, set[str] | None] = {}
    for name in contracts.load("llm_args").items:
        top, _, sub = name.partition(".")
        if sub:
            nested = keys.get(top) or set()
            nested.add(sub)
            keys[top] = nested
        else:
            keys.setdefault(top, None)
    return {k: (frozenset(v) if v is not None else None) for k, v in keys.items()}


#: Every ``TorchLlmArgs`` key of :data:`TRTLLM_LLMAPI_VERSION` with the allowed sub-keys of the nested configs
#: dsv3ctl writes (None = scalar or a config dsv3ctl does not write into).
LLMAPI_KEYS: dict[str, frozenset[str] | None] = _llmapi_keys()
#: Keys of Triton's llmapi model.yaml that the Python model consumes itself (not passed to ``LLM``).
#: ``cancellation_check_period_ms``: how often the model polls ``request.is_cancelled()`` (TensorRT-LLM
#: ``triton_backend/all_models/llmapi/tensorrt_llm/1/model.py``, default 100).
TRITON_YAML_KEYS = {"triton_config": frozenset({"max_batch_size", "decoupled", "cancellation_check_period_ms"})}


# --------------------------------------------------------------------------------------------- engine info
@dataclass(frozen=True)
class EngineInfo:
    """What the repository needs from an engine's ``config.json`` (trtllm-build output)."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_beam_width: int
    world_size: int
    tp_size: int
    pp_size: int
    dtype: str
    logits_dtype: str
    placeholder: bool

    @classmethod
    def from_config(cls, cfg: Any, source: str = "config.json") -> EngineInfo:
        """Raises SpecError naming the missing key when ``cfg`` is not a trtllm-build config.json."""
        if not isinstance(cfg, dict) or not {"pretrained_config", "build_config"} <= set(cfg):
            raise SpecError(f"{source}: not a trtllm-build engine config (needs version, pretrained_config, "
                            "build_config); pass the directory trtllm-build wrote with --output_dir")
        pc, bc = cfg["pretrained_config"], cfg["build_config"]
        mapping = pc.get("mapping") or {}
        try:
            tp, pp = int(mapping["tp_size"]), int(mapping.get("pp_size", 1))
            return cls(
                max_batch_size=int(bc["max_batch_size"]), max_input_len=int(bc["max_input_len"]),
                max_seq_len=int(bc["max_seq_len"]), max_beam_width=int(bc.get("max_beam_width", 1)),
                world_size=int(mapping.get("world_size", tp * pp)), tp_size=tp, pp_size=pp,
                dtype=str(pc.get("dtype", "bfloat16")), logits_dtype=str(pc.get("logits_dtype", "float32")),
                placeholder="dsv3ctl_placeholder" in cfg,
            )
        except KeyError as err:
            raise SpecError(f"{source}: missing key {err.args[0]!r} in pretrained_config/build_config; "
                            "rebuild the engine with trtllm-build") from None


# --------------------------------------------------------------------------------------------- tensors
# (name, dtype, dims, optional, reshape-to-scalar, ragged)
_T = tuple[str, str, list[int], bool, bool, bool]


def _t(name: str, dtype: str, dims: list[int], optional: bool = False, scalar: bool = False,
       ragged: bool = False) -> _T:
    return (name, dtype, dims, optional, scalar, ragged)


#: Client-facing inputs of ``ensemble`` and ``tensorrt_llm_bls`` (tensorrtllm_backend v0.19.0 names/dtypes).
CLIENT_INPUTS: list[_T] = [
    _t("text_input", "STRING", [1], optional=True), _t("messages", "STRING", [1], optional=True),
    _t("max_tokens", "INT32", [1]),
    _t("bad_words", "STRING", [-1], True), _t("stop_words", "STRING", [-1], True),
    _t("embedding_bias_words", "STRING", [-1], True), _t("embedding_bias_weights", "FP32", [-1], True),
    _t("exclude_input_in_output", "BOOL", [1], True), _t("end_id", "INT32", [1], True),
    _t("pad_id", "INT32", [1], True), _t("top_k", "INT32", [1], True), _t("top_p", "FP32", [1], True),
    _t("temperature", "FP32", [1], True), _t("length_penalty", "FP32", [1], True),
    _t("repetition_penalty", "FP32", [1], True), _t("min_length", "INT32", [1], True),
    _t("presence_penalty", "FP32", [1], True), _t("frequency_penalty", "FP32", [1], True),
    _t("random_seed", "UINT64", [1], True), _t("return_log_probs", "BOOL", [1], True),
    _t("return_context_logits", "BOOL", [1], True), _t("return_generation_logits", "BOOL", [1], True),
    _t("beam_width", "INT32", [1], True), _t("stream", "BOOL", [1], True),
    _t("num_return_sequences", "INT32", [1], True),
]


def client_outputs(logits: str) -> list[_T]:
    return [
        _t("text_output", "STRING", [-1]), _t("cum_log_probs", "FP32", [-1]),
        _t("output_log_probs", "FP32", [-1, -1]), _t("context_logits", logits, [-1, -1]),
        _t("generation_logits", logits, [-1, -1, -1]), _t("batch_index", "INT32", [1]),
        _t("sequence_index", "INT32", [1]),
    ]


PRE_INPUTS: list[_T] = [
    _t("QUERY", "STRING", [1], True), _t("MESSAGES", "STRING", [1], True), _t("REQUEST_OUTPUT_LEN", "INT32", [1]),
    _t("BAD_WORDS_DICT", "STRING", [-1], True), _t("STOP_WORDS_DICT", "STRING", [-1], True),
    _t("EMBEDDING_BIAS_WORDS", "STRING", [-1], True), _t("EMBEDDING_BIAS_WEIGHTS", "FP32", [-1], True),
    _t("END_ID", "INT32", [1], True), _t("PAD_ID", "INT32", [1], True),
]
PRE_OUTPUTS: list[_T] = [
    _t("INPUT_ID", "INT32", [-1]), _t("REQUEST_INPUT_LEN", "INT32", [1]), _t("BAD_WORDS_IDS", "INT32", [2, -1]),
    _t("STOP_WORDS_IDS", "INT32", [2, -1]), _t("EMBEDDING_BIAS", "FP32", [-1]),
    _t("REQUEST_OUTPUT_LEN", "INT32", [-1]), _t("OUT_END_ID", "INT32", [1]), _t("OUT_PAD_ID", "INT32", [1]),
]
LLM_INPUTS: list[_T] = [
    _t("input_ids", "INT32", [-1], True, ragged=True), _t("input_lengths", "INT32", [1], scalar=True),
    _t("request_output_len", "INT32", [1], scalar=True),
    _t("end_id", "INT32", [1], True, True), _t("pad_id", "INT32", [1], True, True),
    _t("stop_words_list", "INT32", [2, -1], True, ragged=True), _t("bad_words_list", "INT32", [2, -1], True, ragged=True),
    _t("embedding_bias", "FP32", [-1], True, ragged=True),
    _t("beam_width", "INT32", [1], True, True), _t("temperature", "FP32", [1], True, True),
    _t("runtime_top_k", "INT32", [1], True, True), _t("runtime_top_p", "FP32", [1], True, True),
    _t("len_penalty", "FP32", [1], True, True), _t("repetition_penalty", "FP32", [1], True, True),
    _t("min_length", "INT32", [1], True, True), _t("presence_penalty", "FP32", [1], True, True),
    _t("frequency_penalty", "FP32", [1], True, True), _t("random_seed", "UINT64", [1], True, True),
    _t("return_log_probs", "BOOL", [1], True, True), _t("return_context_logits", "BOOL", [1], True, True),
    _t("return_generation_logits", "BOOL", [1], True, True),
    _t("exclude_input_in_output", "BOOL", [1], True, True), _t("stop", "BOOL", [1], True, True),
    _t("streaming", "BOOL", [1], True, True), _t("num_return_sequences", "INT32", [1], True, True),
]


def llm_outputs(logits: str) -> list[_T]:
    return [
        _t("output_ids", "INT32", [-1, -1]), _t("sequence_length", "INT32", [-1]),
        _t("cum_log_probs", "FP32", [-1]), _t("output_log_probs", "FP32", [-1, -1]),
        _t("context_logits", logits, [-1, -1]), _t("generation_logits", logits, [-1, -1, -1]),
        _t("batch_index", "INT32", [1]), _t("sequence_index", "INT32", [1]),
    ]


POST_INPUTS: list[_T] = [_t("TOKENS_BATCH", "INT32", [-1, -1]), _t("SEQUENCE_LENGTH", "INT32", [-1])]
POST_OUTPUTS: list[_T] = [_t("OUTPUT", "STRING", [-1])]

# ensemble wiring: {step model input: ensemble tensor}, {step model output: ensemble tensor}
ENSEMBLE_STEPS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("preprocessing",
     {"QUERY": "text_input", "MESSAGES": "messages", "REQUEST_OUTPUT_LEN": "max_tokens",
      "BAD_WORDS_DICT": "bad_words", "STOP_WORDS_DICT": "stop_words",
      "EMBEDDING_BIAS_WORDS": "embedding_bias_words", "EMBEDDING_BIAS_WEIGHTS": "embedding_bias_weights",
      "END_ID": "end_id", "PAD_ID": "pad_id"},
     {"INPUT_ID": "_INPUT_ID", "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN", "BAD_WORDS_IDS": "_BAD_WORDS_IDS",
      "STOP_WORDS_IDS": "_STOP_WORDS_IDS", "EMBEDDING_BIAS": "_EMBEDDING_BIAS",
      "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN", "OUT_END_ID": "_PREPROCESSOR_END_ID",
      "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID"}),
    ("tensorrt_llm",
     {"input_ids": "_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN", "request_output_len": "_REQUEST_OUTPUT_LEN",
      "end_id": "_PREPROCESSOR_END_ID", "pad_id": "_PREPROCESSOR_PAD_ID", "stop_words_list": "_STOP_WORDS_IDS",
      "bad_words_list": "_BAD_WORDS_IDS", "embedding_bias": "_EMBEDDING_BIAS", "beam_width": "beam_width",
      "temperature": "temperature", "runtime_top_k": "top_k", "runtime_top_p": "top_p",
      "len_penalty": "length_penalty", "repetition_penalty": "repetition_penalty", "min_length": "min_length",
      "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
      "random_seed": "random_seed", "return_log_probs": "return_log_probs",
      "return_context_logits": "return_context_logits", "return_generation_logits": "return_generation_logits",
      "exclude_input_in_output": "exclude_input_in_output", "streaming": "stream",
      "num_return_sequences": "num_return_sequences"},
     {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH", "cum_log_probs": "cum_log_probs",
      "output_log_probs": "output_log_probs", "context_logits": "context_logits",
      "generation_logits": "generation_logits", "batch_index": "batch_index", "sequence_index": "sequence_index"}),
    ("postprocessing",
     {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
     {"OUTPUT": "text_output"}),
]

_LOGITS = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16"}


def _pb() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _add(repeated: Any, tensors: list[_T], kind: str) -> None:
    pb = _pb()
    for name, dtype, dims, optional, scalar, ragged in tensors:
        t = repeated.add(name=name, data_type=pb.DataType.Value("TYPE_" + dtype), dims=dims)
        if kind == "input":
            if optional:
                t.optional = True
            if ragged:
                t.allow_ragged_batch = True
            if scalar:
                t.reshape.SetInParent()  # reshape: { shape: [ ] } -> a scalar per request


def _params(cfg: Any, values: dict[str, Any]) -> None:
    for k, v in values.items():
        cfg.parameters[k].string_value = ("true" if v else "false") if isinstance(v, bool) else str(v)


def _cpu_instances(cfg: Any, count: int) -> None:
    pb = _pb()
    cfg.instance_group.add(count=count, kind=pb.ModelInstanceGroup.KIND_CPU)


def engine_configs(spec: Spec, info: EngineInfo, engine_mount: str = DEFAULT_ENGINE_MOUNT) -> dict[str, model_config_pb2.ModelConfig]:
    """The five ``ModelConfig`` messages of engine mode, by model name.

    ``max_batch_size`` of every model is the engine's ``build_config.max_batch_size`` (a larger value
    would admit batches the engine cannot run); ``max_beam_width`` is the engine's; the ``tensorrt_llm``
    model reads the engines from ``engine_mount`` (their path inside the pod). Serving options come from
    ``spec.serving``: batching is ``inflight_fused_batching``; ``kv_cache_free_gpu_mem_fraction``,
    ``exclude_input_in_output``, ``batch_scheduler_policy``, ``enable_chunked_context``,
    ``enable_kv_cache_reuse``, ``decoupled`` (tensorrt_llm and tensorrt_llm_bls alike) and the
    ``*_instances`` counts.
    Raises SpecError when ``engine_mount`` is not an absolute path or the engine's logits dtype is unknown.
    """
    pb = _pb()
    if not engine_mount.startswith("/"):
        raise SpecError(f"--engine-mount={engine_mount!r}: must be the absolute path where the engines are "
                        f"mounted inside the pod, e.g. {DEFAULT_ENGINE_MOUNT}")
    if info.logits_dtype not in _LOGITS:
        raise SpecError(f"engine config.json: pretrained_config.logits_dtype={info.logits_dtype!r}: expected one "
                        f"of {', '.join(_LOGITS)}")
    logits = _LOGITS[info.logits_dtype]
    srv = spec.serving
    mbs = info.max_batch_size
    out: dict[str, Any] = {}

    ens = pb.ModelConfig(name="ensemble", platform="ensemble", max_batch_size=mbs)
    _add(ens.input, CLIENT_INPUTS, "input")
    _add(ens.output, client_outputs(logits), "output")
    for model, imap, omap in ENSEMBLE_STEPS:
        step = ens.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        for k, v in imap.items():
            step.input_map[k] = v
        for k, v in omap.items():
            step.output_map[k] = v
    out["ensemble"] = ens

    pre = pb.ModelConfig(name="preprocessing", backend="python", max_batch_size=mbs)
    _add(pre.input, PRE_INPUTS, "input")
    _add(pre.output, PRE_OUTPUTS, "output")
    _cpu_instances(pre, srv.preprocessing_instances)
    pre.dynamic_batching.SetInParent()
    _params(pre, {"tokenizer_dir": TOKENIZER_SUBDIR, "add_special_tokens": True, "max_input_len": info.max_input_len})
    out["preprocessing"] = pre

    llm = pb.ModelConfig(name="tensorrt_llm", backend="tensorrtllm", max_batch_size=mbs)
    llm.model_transaction_policy.decoupled = srv.decoupled
    llm.dynamic_batching.preferred_batch_size.append(mbs)
    llm.dynamic_batching.max_queue_delay_microseconds = 0
    llm.dynamic_batching.default_queue_policy.max_queue_size = 0
    _add(llm.input, LLM_INPUTS, "input")
    _add(llm.output, llm_outputs(logits), "output")
    _cpu_instances(llm, 1)
    _params(llm, {
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": engine_mount,
        "max_beam_width": info.max_beam_width,
        "batch_scheduler_policy": srv.batch_scheduler_policy,
        "kv_cache_free_gpu_mem_fraction": srv.kv_cache_free_gpu_mem_fraction,
        "exclude_input_in_output": srv.exclude_input_in_output,
        "enable_kv_cache_reuse": srv.enable_kv_cache_reuse,
        "enable_chunked_context": srv.enable_chunked_context,
        "normalize_log_probs": True,
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "executor_worker_path": EXECUTOR_WORKER_PATH,
    })
    out["tensorrt_llm"] = llm

    post = pb.ModelConfig(name="postprocessing", backend="python", max_batch_size=mbs)
    _add(post.input, POST_INPUTS, "input")
    _add(post.output, POST_OUTPUTS, "output")
    _cpu_instances(post, srv.postprocessing_instances)
    post.dynamic_batching.SetInParent()
    _params(post, {"tokenizer_dir": TOKENIZER_SUBDIR, "skip_special_tokens": True})
    out["postprocessing"] = post

    bls = pb.ModelConfig(name="tensorrt_llm_bls", backend="python", max_batch_size=mbs)
    bls.model_transaction_policy.decoupled = srv.decoupled
    _add(bls.input, CLIENT_INPUTS, "input")
    _add(bls.output, client_outputs(logits), "output")
    _cpu_instances(bls, srv.bls_instances)
    _params(bls, {"tokenizer_dir": TOKENIZER_SUBDIR, "skip_special_tokens": True,
                  "tensorrt_llm_model_name": "tensorrt_llm", "preprocessing_model_name": "preprocessing"})
    out["tensorrt_llm_bls"] = bls
    return out


def to_pbtxt(cfg: Any) -> str:
    """Protobuf text format of a ModelConfig (what Triton reads from config.pbtxt)."""
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text into ModelConfig; raises google.protobuf.text_format.ParseError."""
    from google.protobuf import text_format

    return text_format.Parse(text, _pb().ModelConfig())


# --------------------------------------------------------------------------------------------- llmapi
LLMAPI_INPUTS: list[_T] = [
    _t("text_input", "STRING", [-1]), _t("streaming", "BOOL", [1], True),
    _t("sampling_param_max_tokens", "INT32", [1], True), _t("sampling_param_temperature", "FP32", [1], True),
    _t("sampling_param_top_k", "INT32", [1], True), _t("sampling_param_top_p", "FP32", [1], True),
    _t("sampling_param_frequency_penalty", "FP32", [1], True),
    _t("sampling_param_presence_penalty", "FP32", [1], True), _t("sampling_param_seed", "UINT64", [1], True),
    _t("sampling_param_stop", "STRING", [-1], True), _t("sampling_param_beam_width", "INT32", [1], True),
    _t("sampling_param_best_of", "INT32", [1], True),
    _t("sampling_param_exclude_input_from_output", "BOOL", [1], True),
    _t("return_finish_reason", "BOOL", [1], True),
]
LLMAPI_OUTPUTS: list[_T] = [_t("text_output", "STRING", [-1]), _t("finish_reason", "STRING", [-1])]


def llm_api_args(spec: Spec, model_path: str) -> dict[str, Any]:
    """LLM API arguments (``TorchLlmArgs`` keys of :data:`TRTLLM_LLMAPI_VERSION`) for DeepSeek-V3 from the spec,
    whose llmapi keys already carry ``serving.profile`` (:data:`dsv3ctl.core.spec.SERVING_PROFILES`) where the
    spec leaves them unset: parallel sizes from ``spec.parallelism`` (moe_tp = tp / moe_ep), sizes and KV cache
    (``kv_cache_config.dtype`` from ``kv_cache_dtype``) from ``spec.serving``, MTP (``speculative_config``) when
    ``mtp_layers`` > 0, attention data parallelism, ``moe_config.backend``, ``stream_interval``.

    CUDA graphs: ``cuda_graph_config {enable_padding: true, max_batch_size: N}`` with N =
    ``cuda_graph_max_batch_size`` (``auto``: ``max_batch_size``) (padding rounds a batch up to the next
    captured size). ``cuda_graph_max_batch_size: 0`` writes ``cuda_graph_config: null``, which turns CUDA graphs
    off: TorchLlmArgs' default is ``default_factory=CudaGraphConfig`` (on, up to 128, no padding), so the key is
    never written as null otherwise (llm_args.json, item ``cuda_graph_config``)."""
    par, srv = spec.parallelism, spec.serving
    kv: dict[str, Any] = {"free_gpu_memory_fraction": srv.kv_cache_free_gpu_mem_fraction,
                          "enable_block_reuse": srv.enable_kv_cache_reuse, "dtype": srv.kv_cache_dtype}
    graphs = srv.max_batch_size if srv.cuda_graph_max_batch_size == "auto" else int(srv.cuda_graph_max_batch_size)
    args: dict[str, Any] = {
        "model": model_path,
        "backend": "pytorch",
        "tensor_parallel_size": par.tp,
        "pipeline_parallel_size": par.pp,
        "moe_expert_parallel_size": par.moe_ep,
        "moe_tensor_parallel_size": par.moe_tp,
        "enable_attention_dp": srv.enable_attention_dp,
        "max_batch_size": srv.max_batch_size,
        "max_num_tokens": srv.max_num_tokens,
        "max_seq_len": srv.max_seq_len,
        "max_beam_width": srv.max_beam_width,
        "trust_remote_code": True,
        "enable_chunked_prefill": srv.enable_chunked_context,
        "kv_cache_config": kv,
        "scheduler_config": {"capacity_scheduler_policy": srv.batch_scheduler_policy.upper()},
        "cuda_graph_config": {"enable_padding": True, "max_batch_size": graphs} if graphs > 0 else None,
    }
    args["moe_config"] = {"backend": srv.moe_backend}
    args["stream_interval"] = srv.stream_interval
    if srv.mtp_layers > 0:
        args["speculative_config"] = {"decoding_type": "MTP", "num_nextn_predict_layers": srv.mtp_layers}
    return args


def llmapi_key_problems(data: dict[str, Any], source: str, allow_triton: bool) -> list[str]:
    """Keys of ``data`` not in :data:`LLMAPI_KEYS` (and :data:`TRITON_YAML_KEYS` when ``allow_triton``),
    one ``source: key: problem: fix`` line each."""
    known: dict[str, frozenset[str] | None] = dict(LLMAPI_KEYS)
    if allow_triton:
        known.update(TRITON_YAML_KEYS)
    problems = []
    for k, v in data.items():
        if k not in known:
            import difflib

            near = difflib.get_close_matches(k, list(known), n=1)
            problems.append(f"{source}: {k}: not an LlmArgs key of TensorRT-LLM {TRTLLM_LLMAPI_VERSION}: "
                            f"{'use ' + repr(near[0]) if near else 'remove it'}")
            continue
        sub = known[k]
        if sub is not None and v is not None:
            if not isinstance(v, dict):
                problems.append(f"{source}: {k}: must be a mapping: use keys {', '.join(sorted(sub))}")
                continue
            for kk in v:
                if kk not in sub:
                    problems.append(f"{source}: {k}.{kk}: not a key of {k} in TensorRT-LLM "
                                    f"{TRTLLM_LLMAPI_VERSION}: use one of {', '.join(sorted(sub))}")
    return problems


def llmapi_files(spec: Spec, model_path: str) -> dict[str, str]:
    """llmapi mode: ``{relative path: text}`` for ``tensorrt_llm/config.pbtxt``,
    ``tensorrt_llm/1/model.yaml`` (LLM API args + ``triton_config``) and ``extra-llm-api-options.yaml``
    (the same settings for ``trtllm-serve --extra_llm_api_options``; model and backend go on its command
    line). Batching inside Triton's llmapi model is not supported upstream (model.yaml
    ``triton_config.max_batch_size: 0``), so Triton's max_batch_size is 0 and the LLM batches itself."""
    import yaml

    pb = _pb()
    args = llm_api_args(spec, model_path)
    cfg = pb.ModelConfig(name=LLMAPI_MODEL, backend="python", max_batch_size=0)
    cfg.model_transaction_policy.decoupled = spec.serving.decoupled
    _add(cfg.input, LLMAPI_INPUTS, "input")
    _add(cfg.output, LLMAPI_OUTPUTS, "output")
    _cpu_instances(cfg, 1)
    _params(cfg, {"llm_config_file": "model.yaml"})
    model_yaml = dict(args)
    model_yaml["triton_config"] = {"max_batch_size": 0, "decoupled": spec.serving.decoupled}
    extra = {k: v for k, v in args.items() if k not in ("model", "backend")}
    head = f"# generated by dsv3ctl for TensorRT-LLM {TRTLLM_LLMAPI_VERSION} LlmArgs (PyTorch backend)\n"
    return {
        f"{LLMAPI_MODEL}/config.pbtxt": to_pbtxt(cfg),
        f"{LLMAPI_MODEL}/1/model.yaml": head + yaml.safe_dump(model_yaml, sort_keys=False),
        EXTRA_OPTIONS_FILE: head + yaml.safe_dump(extra, sort_keys=False),
    }
