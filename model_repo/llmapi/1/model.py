"""Triton Python model ``tensorrt_llm`` for llmapi mode (dsv3ctl's own): serves DeepSeek-V3 with
TensorRT-LLM's LLM API on the PyTorch backend, many requests in flight at once.

Design (as TensorRT-LLM's own llmapi Triton model, ``triton_backend/all_models/llmapi/tensorrt_llm/1/model.py``,
and tensorrtllm_backend v0.19.0 ``all_models/llmapi/tensorrt_llm/1/model.py``): the model is decoupled; an
asyncio event loop runs in a background thread and owns the ``LLM`` object; ``execute()`` hands each request
to that loop (``asyncio.run_coroutine_threadsafe``) and returns at once, so Triton's single execute thread
never waits for a generation and the LLM batches all requests in flight. Each request's coroutine iterates
``LLM.generate_async(prompt, SamplingParams(...), streaming=...)``: streaming sends one response per output
(the new text since the last one) and the FINAL flag with the last; non-streaming sends one response with
the FINAL flag. A failure (bad input, a generation error, also mid-stream) is sent on that request's own
response sender as an error response with the FINAL flag; other requests are not affected. A cancellation
thread polls ``request.is_cancelled()`` every ``triton_config.cancellation_check_period_ms`` (default 100 ms)
and, for a request whose client went away, aborts the LLM API request (``RequestOutput.abort()``) and closes
its stream with a CANCELLED error.

Configuration: the LLM API arguments are read from the file named by the model parameter
``llm_config_file`` (``model.yaml`` when unset; the environment variable ``LLM_CONFIG_PATH`` overrides it, as
upstream), relative to this version directory. Its ``triton_config`` mapping is consumed here
(``cancellation_check_period_ms``, ``max_batch_size``, ``decoupled``) and not passed to ``LLM``. This model
has no ``auto_complete_config``: config.pbtxt states max_batch_size 0 and the transaction policy itself.
With ``decoupled: false`` execute() still starts every request of a call at once but must wait for them to
return the responses (Triton allows no deferred responses there), so requests of separate calls run one
after the other and streaming is refused; the default (``serving.decoupled: true``) is concurrent.

Tensor names follow upstream's llmapi model: inputs ``text_input``, ``streaming``, ``sampling_param_*``,
``return_finish_reason``; outputs ``text_output``, ``finish_reason``. The ``sampling_param_*`` inputs map
only to fields of TensorRT-LLM 1.0.0's ``SamplingParams`` (:data:`SAMPLING`; each field is listed with its
line in dsv3ctl's contract data ``dsv3ctl/data/contracts/sampling_params.json``).

Launched under ``trtllm-llmapi-launch`` for multi-node worlds, this model runs on rank 0 only; the LLM
object drives the MPI workers the wrapper started. Needs the image's tensorrt_llm (>= 1.0) and GPUs; dsv3ctl's
tests run it against test doubles of ``triton_python_backend_utils`` and of the LLM API.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

#: request tensor -> TensorRT-LLM 1.0.0 ``SamplingParams`` field (tensorrt_llm/sampling_params.py).
#: Beam search there is ``use_beam_search`` + ``best_of`` (beam width = best_of): ``sampling_param_beam_width``
#: > 1 sets both, see :func:`_params`.
SAMPLING = {
    "sampling_param_max_tokens": "max_tokens", "sampling_param_temperature": "temperature",
    "sampling_param_top_k": "top_k", "sampling_param_top_p": "top_p",
    "sampling_param_frequency_penalty": "frequency_penalty", "sampling_param_presence_penalty": "presence_penalty",
    "sampling_param_seed": "seed", "sampling_param_best_of": "best_of",
}
#: every SamplingParams field this model can set (the contract test checks them against the data file)
SAMPLING_FIELDS = frozenset(SAMPLING.values()) | {"use_beam_search", "n", "stop", "exclude_input_from_output"}
DEFAULT_CONFIG_FILE = "model.yaml"
DEFAULT_CANCELLATION_CHECK_MS = 100
SHUTDOWN_TIMEOUT_S = 60.0


def _value(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy().reshape(-1)


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _params(request) -> dict:
    """SamplingParams keyword arguments of one request (only fields TensorRT-LLM 1.0.0 has)."""
    kw = {}
    for name, field in SAMPLING.items():
        v = _value(request, name)
        if v is not None:
            kw[field] = v[0].item()
    beam = _value(request, "sampling_param_beam_width")
    if beam is not None and int(beam[0]) > 1:
        # SamplingParams has no beam_width: beam search is use_beam_search with best_of beams (n returned)
        kw.update(use_beam_search=True, best_of=int(beam[0]), n=1)
    stop = _value(request, "sampling_param_stop")
    if stop is not None:
        kw["stop"] = [_text(s) for s in stop]
    excl = _value(request, "sampling_param_exclude_input_from_output")
    if excl is not None:
        kw["exclude_input_from_output"] = bool(excl[0])
    return kw


class _Stream:
    """One request's response sender, closed at most once (the coroutine and the cancellation thread race)."""

    def __init__(self, request):
        self.request = request
        self.sender = request.get_response_sender()
        self.lock = threading.Lock()
        self.closed = False
        self.result = None  # the LLM API RequestOutput, for abort()

    def send(self, response, final: bool) -> bool:
        with self.lock:
            if self.closed:
                return False
            if final:
                self.closed = True
            self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)
            return True

    def fail(self, message: str, cancelled: bool = False) -> bool:
        code = getattr(pb_utils.TritonError, "CANCELLED", None) if cancelled else None
        err = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
        return self.send(pb_utils.InferenceResponse(output_tensors=[], error=err), final=True)


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.model_config)
        params = self.model_config.get("parameters") or {}
        name = (params.get("llm_config_file") or {}).get("string_value") or DEFAULT_CONFIG_FILE
        name = os.environ.get("LLM_CONFIG_PATH", name)
        path = os.path.join(args["model_repository"], str(args["model_version"]), name)
        with open(path, encoding="utf-8") as f:
            llm_args = yaml.safe_load(f) or {}
        triton_config = llm_args.pop("triton_config", None) or {}
        self.check_period_s = float(triton_config.get("cancellation_check_period_ms",
                                                      DEFAULT_CANCELLATION_CHECK_MS)) / 1000.0
        self.llm_args = llm_args
        self.streams: dict[int, _Stream] = {}
        self.streams_lock = threading.Lock()
        self.running = True
        self._start_loop()
        self.cancel_thread = threading.Thread(target=self._cancellation_loop, name="llmapi-cancel", daemon=True)
        self.cancel_thread.start()

    # ------------------------------------------------------------------ event loop thread owning the LLM
    def _start_loop(self):
        from tensorrt_llm import LLM, SamplingParams

        self._sampling_params = SamplingParams
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                # the LLM is created inside the loop's thread: its result queues bind to this event loop
                self.llm = LLM(**self.llm_args)
            except BaseException as err:  # handed back to initialize(), which raises it
                failure.append(err)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.loop_thread = threading.Thread(target=run, name="llmapi-loop", daemon=True)
        self.loop_thread.start()
        ready.wait()
        if failure:
            self.loop_thread.join()
            raise failure[0]

    # ------------------------------------------------------------------ requests
    def execute(self, requests):
        futures = []
        for request in requests:
            stream = _Stream(request)
            futures.append((stream, asyncio.run_coroutine_threadsafe(self._serve(stream), self.loop)))
        if self.decoupled:
            return None  # responses go through each request's sender from the loop thread
        return [fut.result() for _, fut in futures]

    async def _serve(self, stream: _Stream):
        """Run one request to its end; returns the response in non-decoupled mode (None otherwise)."""
        key = id(stream)
        try:
            text = _value(stream.request, "text_input")
            if text is None or len(text) == 0:
                raise ValueError("text_input is missing: send one prompt string")
            prompt = _text(text[0])
            flag = _value(stream.request, "streaming")
            streaming = bool(flag is not None and flag[0])
            if streaming and not self.decoupled:
                raise ValueError("streaming needs the decoupled transaction policy (serving.decoupled: true)")
            params = self._sampling_params(**_params(stream.request))
            stream.result = self.llm.generate_async(prompt, params, streaming=streaming)
            with self.streams_lock:
                self.streams[key] = stream
            sent, last = 0, None
            async for out in stream.result:
                last = out
                if streaming:
                    c = out.outputs[0]
                    if not stream.send(_response(c.text[sent:], c.finish_reason), final=bool(out.finished)):
                        return None  # cancelled meanwhile
                    sent = len(c.text)
            if last is None:
                raise RuntimeError("the LLM API returned no output")
            c = last.outputs[0]
            if not self.decoupled:
                return _response(c.text, c.finish_reason)
            if not streaming:
                stream.send(_response(c.text, c.finish_reason), final=True)
            elif not stream.closed:
                stream.send(None, final=True)  # the last output was not marked finished
            return None
        except Exception as err:
            message = f"tensorrt_llm: {type(err).__name__}: {err}"
            if not self.decoupled:
                return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
            stream.fail(message)
            return None
        finally:
            with self.streams_lock:
                self.streams.pop(key, None)

    def _cancellation_loop(self):
        while self.running:
            time.sleep(self.check_period_s)
            with self.streams_lock:
                streams = list(self.streams.values())
            for stream in streams:
                if stream.closed or not stream.request.is_cancelled():
                    continue
                if stream.result is not None:
                    stream.result.abort()
                stream.fail("request cancelled by the client", cancelled=True)

    def finalize(self):
        self.running = False
        loop = getattr(self, "loop", None)
        if loop is None:
            return
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while self.streams and time.monotonic() < deadline:
            time.sleep(0.05)  # let requests in flight finish, up to SHUTDOWN_TIMEOUT_S

        async def stop():
            await asyncio.get_running_loop().run_in_executor(None, self.llm.shutdown)

        if hasattr(self, "llm"):
            try:
                asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=max(1.0, deadline - time.monotonic()))
            except Exception as err:
                pb_utils.Logger.log_error(f"tensorrt_llm: LLM.shutdown did not finish: {err}")
        loop.call_soon_threadsafe(loop.stop)
        self.loop_thread.join(timeout=5.0)
        self.cancel_thread.join(timeout=5.0)


def _response(text: str, reason) -> object:
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=object)),
        pb_utils.Tensor("finish_reason", np.array([(reason or "").encode("utf-8")], dtype=object))])
