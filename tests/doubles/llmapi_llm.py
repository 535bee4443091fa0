"""Test double of TensorRT-LLM's LLM API (``tensorrt_llm.LLM``, ``tensorrt_llm.SamplingParams``) for the llmapi
Triton model: the real one needs GPUs and the model's weights. Tests install this module as ``tensorrt_llm``
in ``sys.modules`` before loading ``model_repo/llmapi/1/model.py``.

What it mirrors (TensorRT-LLM 1.0 ``tensorrt_llm/llmapi/llm.py``, ``executor/result.py``): ``LLM(**llm_args)``;
``LLM.generate_async(prompt, sampling_params, streaming=False)`` returns a request result that is async
iterable (streaming: one ``RequestOutput`` per token; otherwise one at the end) and has ``abort()``;
``RequestOutput.outputs[0]`` has ``text`` (the whole text so far) and ``finish_reason``; ``finished``;
``LLM.shutdown()``. Each token takes :data:`CONFIG` ``["token_delay_s"]`` seconds of ``asyncio.sleep`` (the
real LLM generates in its own executor, so awaiting a result never blocks the event loop); a generation
yields ``min(CONFIG["tokens"], max_tokens)`` tokens. A prompt ``"fail-after:K"`` raises ``RuntimeError``
after K tokens (an error mid-stream).

It accepts no more than the real thing: ``SamplingParams`` takes only the fields listed in dsv3ctl's contract
data ``sampling_params.json`` and ``LLM`` only the keys of ``llm_args.json`` (both read from TensorRT-LLM's
source; see dsv3ctl.core.contracts); anything else raises ``TypeError`` as the real constructors do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from dsv3ctl.core import contracts

#: knobs the tests set: tokens per request and seconds per token
CONFIG: dict[str, Any] = {"tokens": 10, "token_delay_s": 0.05}
#: every LLM built and every request result handed out, for the tests to inspect
INSTANCES: list[LLM] = []


class SamplingParams:
    def __init__(self, **kw: Any) -> None:
        bad = contracts.load("sampling_params").missing(sorted(kw))
        if bad:
            raise TypeError(f"SamplingParams.__init__() got an unexpected keyword argument {bad[0]!r}")
        self.max_tokens = 32  # SamplingParams.max_tokens default
        for k, v in kw.items():
            setattr(self, k, v)


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    prompt: str
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False


class _Result:
    def __init__(self, prompt: str, params: SamplingParams, streaming: bool) -> None:
        self.prompt, self.params, self.streaming = prompt, params, streaming
        self.aborted = False
        self.tokens_made = 0

    def abort(self) -> None:
        self.aborted = True

    def __aiter__(self):
        return self._run()

    async def _run(self):
        n = min(int(CONFIG["tokens"]), int(self.params.max_tokens))
        fail_at = int(self.prompt.split(":", 1)[1]) if self.prompt.startswith("fail-after:") else None
        text = ""
        for i in range(n):
            if self.aborted:
                return
            await asyncio.sleep(float(CONFIG["token_delay_s"]))
            if fail_at is not None and i == fail_at:
                raise RuntimeError(f"generation failed after {fail_at} tokens")
            text += f"t{i} "
            self.tokens_made += 1
            last = i == n - 1
            if self.streaming or last:
                yield RequestOutput(self.prompt, [CompletionOutput(0, text, "length" if last else None)], last)


class LLM:
    def __init__(self, **llm_args: Any) -> None:
        c = contracts.load("llm_args")
        names = list(llm_args)
        for k, v in llm_args.items():  # nested configs are StrictBaseModel (extra=forbid) in TorchLlmArgs
            if isinstance(v, dict) and any(n.startswith(k + ".") for n in c.items):
                names += [f"{k}.{kk}" for kk in v]
        bad = c.missing(names)
        if bad:
            raise TypeError(f"LLM got an unexpected argument {bad[0]!r} (not a TorchLlmArgs field)")
        self.args = llm_args
        self.results: list[_Result] = []
        self.shut_down = False
        INSTANCES.append(self)

    def generate_async(self, prompt: str, sampling_params: SamplingParams, streaming: bool = False) -> _Result:
        assert not self.shut_down, "generate_async after shutdown"
        r = _Result(prompt, sampling_params, streaming)
        self.results.append(r)
        return r

    def shutdown(self) -> None:
        self.shut_down = True
