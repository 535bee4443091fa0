"""Pure request builders for Triton's LLM models, and DeepSeek-V3 chat-template rendering.

Three model kinds are served by the bundle (tensor names and types: tensorrtllm_backend
``all_models/inflight_batcher_llm`` v0.19.0 and ``all_models/llmapi`` v0.19.0):

- ``ensemble`` and ``tensorrt_llm_bls``: ``max_batch_size > 0`` so every tensor carries a leading batch
  dimension of 1. Inputs ``text_input:BYTES[1]``, ``max_tokens:INT32[1]`` (both required), optional
  ``stream:BOOL``, ``temperature:FP32``, ``top_p:FP32``, ``top_k:INT32``, ``random_seed:UINT64``,
  ``exclude_input_in_output:BOOL``, ``stop_words:BYTES[-1]``. Output ``text_output:BYTES[-1]``.
- ``llmapi`` (the PyTorch-backend model that upstream names ``tensorrt_llm``): ``max_batch_size 0``, so
  shapes are the declared dims. Inputs ``text_input:BYTES[-1]``, ``streaming:BOOL[1]`` and
  ``sampling_param_{max_tokens,temperature,top_p,top_k,seed,stop,exclude_input_from_output}``.
  Output ``text_output``.

Nothing here touches the network; :mod:`dsv3ctl.adapters.triton` turns :class:`TensorSpec` lists into
tritonclient inputs and JSON bodies into HTTP requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dsv3ctl.errors import SpecError

OUTPUT_TENSOR = "text_output"


class ModelKind(str, Enum):
    ensemble = "ensemble"
    bls = "tensorrt_llm_bls"
    llmapi = "llmapi"


#: Triton model names used by the bundle and the request kind each one takes.
DEFAULT_KINDS: dict[str, ModelKind] = {
    "ensemble": ModelKind.ensemble,
    "tensorrt_llm_bls": ModelKind.bls,
    "tensorrt_llm": ModelKind.llmapi,
}


def kind_for(model: str, kind: str | None = None) -> ModelKind:
    """The request kind for a Triton model name (``kind`` overrides; raises SpecError when unknown)."""
    if kind:
        try:
            return ModelKind(kind)
        except ValueError:
            raise SpecError(f"unknown model kind {kind!r}",
                            hint=f"use one of: {', '.join(k.value for k in ModelKind)}") from None
    if model in DEFAULT_KINDS:
        return DEFAULT_KINDS[model]
    raise SpecError(f"cannot tell the request format of model {model!r}",
                    hint="pass --kind ensemble|tensorrt_llm_bls|llmapi")


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters. ``max_tokens`` in tokens; ``None`` fields are not sent (server defaults)."""

    max_tokens: int = 128
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def check(self) -> None:
        """Raise SpecError on values the server would reject."""
        if self.max_tokens < 1:
            raise SpecError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise SpecError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise SpecError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise SpecError(f"--top-k must be >= 0, got {self.top_k}")


@dataclass(frozen=True)
class TensorSpec:
    """One input tensor: Triton datatype (``BYTES``, ``INT32``, ``FP32``, ``BOOL``, ``UINT64``), shape and
    row-major values (``str`` for BYTES, encoded UTF-8 by the adapter)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: tuple[Any, ...]


def _scalar(name: str, datatype: str, value: Any, batched: bool) -> TensorSpec:
    return TensorSpec(name, datatype, (1, 1) if batched else (1,), (value,))


def build_tensors(kind: ModelKind, prompt: str, params: GenParams, stream: bool) -> list[TensorSpec]:
    """Input tensors for one generation request to a model of ``kind``.

    ``stream`` asks the model to stream (the model must be decoupled). Completion text only is requested
    (``exclude_input_in_output`` / ``sampling_param_exclude_input_from_output``).
    """
    params.check()
    if kind is ModelKind.llmapi:
        t = [
            TensorSpec("text_input", "BYTES", (1,), (prompt,)),
            _scalar("streaming", "BOOL", stream, False),
            _scalar("sampling_param_max_tokens", "INT32", params.max_tokens, False),
            _scalar("sampling_param_exclude_input_from_output", "BOOL", True, False),
        ]
        opt = [("sampling_param_temperature", "FP32", params.temperature),
               ("sampling_param_top_p", "FP32", params.top_p),
               ("sampling_param_top_k", "INT32", params.top_k),
               ("sampling_param_seed", "UINT64", params.seed)]
        t += [_scalar(n, d, v, False) for n, d, v in opt if v is not None]
        if params.stop:
            t.append(TensorSpec("sampling_param_stop", "BYTES", (len(params.stop),), tuple(params.stop)))
        return t
    t = [
        _scalar("text_input", "BYTES", prompt, True),
        _scalar("max_tokens", "INT32", params.max_tokens, True),
        _scalar("stream", "BOOL", stream, True),
        _scalar("exclude_input_in_output", "BOOL", True, True),
    ]
    opt = [("temperature", "FP32", params.temperature), ("top_p", "FP32", params.top_p),
           ("top_k", "INT32", params.top_k), ("random_seed", "UINT64", params.seed)]
    t += [_scalar(n, d, v, True) for n, d, v in opt if v is not None]
    if params.stop:
        t.append(TensorSpec("stop_words", "BYTES", (1, len(params.stop)), tuple(params.stop)))
    return t


def build_generate_body(kind: ModelKind, prompt: str, params: GenParams, stream: bool) -> dict[str, Any]:
    """JSON body for Triton's HTTP generate extension (``/v2/models/<m>/generate`` and
    ``generate_stream``): one key per input tensor, scalars for one-element tensors, lists otherwise."""
    body: dict[str, Any] = {}
    for t in build_tensors(kind, prompt, params, stream):
        body[t.name] = t.values[0] if len(t.values) == 1 and t.name not in ("stop_words", "sampling_param_stop") \
            else list(t.values)
    return body


# --- chat template -----------------------------------------------------------------------------------

def _token_text(tok: Any) -> str | None:
    if tok is None or isinstance(tok, str):
        return tok
    if isinstance(tok, dict):
        return tok.get("content")
    return None


def render_chat(messages: list[dict[str, Any]], tokenizer_config: dict[str, Any],
                add_generation_prompt: bool = True, server_adds_bos: bool | None = None) -> str:
    """Render ``messages`` (``{"role": "system"|"user"|"assistant"|"tool", "content": str}``) with the
    ``chat_template`` of a Hugging Face ``tokenizer_config.json`` (DeepSeek-V3's, or R1's).

    BOS is emitted exactly once overall: V3's template writes ``bos_token`` itself *and* its tokenizer has
    ``add_bos_token: true``, and Triton's preprocessing encodes with special tokens added. So when
    ``server_adds_bos`` (default: the config's ``add_bos_token``) is true, a leading BOS written by the
    template is removed here. Raises SpecError when the config has no chat template or it fails.
    """
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # list-of-named-templates form
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        raise SpecError("the tokenizer_config.json has no chat_template",
                        hint="pass --tokenizer-dir pointing at the deployment's tokenizer files")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise SpecError(f"message {i} must be an object with 'role' and 'content'")
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise SpecError(f"chat template: {msg}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    bos = _token_text(tokenizer_config.get("bos_token")) or ""
    eos = _token_text(tokenizer_config.get("eos_token")) or ""
    try:
        text = env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=bos, eos_token=eos)
    except TemplateError as e:
        raise SpecError(f"chat template failed: {e}") from None
    if server_adds_bos is None:
        server_adds_bos = bool(tokenizer_config.get("add_bos_token", False))
    if server_adds_bos and bos and text.startswith(bos):
        text = text[len(bos):]
    return text
