"""TEST DOUBLE of Triton Inference Server's protocol (KServe v2 gRPC + HTTP generate extension).

This is *not* Triton and runs no model. It implements, in-process, just enough of the protocol for
dsv3ctl's clients to be exercised end to end:

- gRPC (``GRPCInferenceService`` from the ``service_pb2_grpc`` that tritonclient ships, on ``grpc.aio``):
  ServerLive/Ready, ModelReady, ServerMetadata, ModelMetadata, ModelStatistics, ModelInfer and the
  decoupled ``ModelStreamInfer`` (honours ``triton_enable_empty_final_response``).
- HTTP (stdlib ``ThreadingHTTPServer``): ``/v2/health/{live,ready}``, ``/v2``, ``/v2/models/<m>``,
  ``/v2/models/<m>/ready``, ``/v2/models/<m>/stats``, ``POST /v2/models/<m>/generate`` and
  ``generate_stream`` (server-sent events, ``data: {"error": ...}`` on failure).

Models: ``ensemble`` and ``tensorrt_llm_bls`` (engine mode) and ``tensorrt_llm`` (llmapi mode), with the
inputs declared in the ``config.pbtxt`` that ``dsv3ctl repo build`` writes (:func:`declared_models`). A
request is checked the way Triton checks it (:func:`check_inputs`: names, datatypes, shapes with the batch
dimension, required inputs) and, once accepted, recorded in ``Behaviour.received`` with its decoded values,
so tests assert what the client really sent.

Generated "tokens" are canned words; behaviour is injected:
- delays: ``ttft_s`` before the first token, ``itl_s`` between tokens (seconds);
- prompt directives: ``FAIL@N`` fails the request after N tokens with a server error,
  ``TAG=<x>`` makes tokens `` <x>:<i>`` (to check that concurrent streams are not mixed),
  ``UTF8SPLIT`` streams multi-byte UTF-8 text one byte per response.

Run standalone: ``python -m tests.doubles.triton_server --grpc-port 8001 --http-port 8000 --itl-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CANNED = ("Hello", "!", " This", " is", " the", " server", " test", " double", ",", " not", " a", " real",
          " model", ".", " It", " streams", " canned", " words", " with", " injected", " delays", ".")
UTF8_TEXT = "héllo wörld — 世界 🙂"
FAIL_RE = re.compile(r"FAIL@(\d+)")
TAG_RE = re.compile(r"TAG=(\S+)")

#: Triton ModelConfig data_type -> the v2 protocol's datatype name
_V2 = {"TYPE_STRING": "BYTES", "TYPE_BOOL": "BOOL", "TYPE_INT32": "INT32", "TYPE_INT64": "INT64",
       "TYPE_UINT64": "UINT64", "TYPE_FP32": "FP32", "TYPE_FP64": "FP64"}


def declared_models() -> dict[str, dict[str, Any]]:
    """The served models' declared inputs, read from the ``config.pbtxt`` text that ``dsv3ctl repo build``
    writes (the repo renderer for the default spec: ``ensemble`` and ``tensorrt_llm_bls`` of engine mode
    over the engine skeleton's config.json, ``tensorrt_llm`` of llmapi mode), parsed back with protobuf's
    text format: per model ``max_batch_size`` and ``inputs`` = {name: (v2 datatype, dims, optional)}."""
    import json as _json

    from google.protobuf import json_format

    from dsv3ctl.core.spec import parse_spec
    from dsv3ctl.render import engine_skeleton
    from dsv3ctl.render import model_repo as R

    spec = parse_spec({})
    info = R.EngineInfo.from_config(_json.loads(engine_skeleton.files(spec)["config.json"]))
    texts = {n: R.to_pbtxt(c) for n, c in R.engine_configs(spec, info).items() if n in ("ensemble", "tensorrt_llm_bls")}
    texts["tensorrt_llm"] = R.llmapi_files(spec, "/models/hf")[f"{R.LLMAPI_MODEL}/config.pbtxt"]
    out = {}
    for name, text in texts.items():
        cfg = json_format.MessageToDict(R.parse_pbtxt(text), preserving_proto_field_name=True)
        out[name] = {"max_batch_size": int(cfg.get("max_batch_size", 0)),
                     "inputs": {t["name"]: (_V2[t["data_type"]], [int(d) for d in t["dims"]], bool(t.get("optional")))
                                for t in cfg["input"]}}
    return out


_DECLARED = declared_models()
MODELS: dict[str, dict[str, Any]] = {
    "ensemble": {"platform": "ensemble", "required": ("text_input",), "stream_key": "stream",
                 "max_key": "max_tokens", **_DECLARED["ensemble"]},
    "tensorrt_llm_bls": {"platform": "python", "required": ("text_input",), "stream_key": "stream",
                         "max_key": "max_tokens", **_DECLARED["tensorrt_llm_bls"]},
    "tensorrt_llm": {"platform": "python", "required": ("text_input",), "stream_key": "streaming",
                     "max_key": "sampling_param_max_tokens", **_DECLARED["tensorrt_llm"]},
}


class RequestError(Exception):
    """An error the double reports to the client as the server's error text."""


@dataclass
class Plan:
    chunks: list[bytes]
    fail_after: int | None = None
    fail_message: str = ""
    stream: bool = True
    prompt: str = ""


@dataclass
class Stats:
    success: int = 0
    fail: int = 0
    success_ns: int = 0
    fail_ns: int = 0
    last_ms: int = 0


@dataclass
class Behaviour:
    """Injected behaviour: delays in seconds; ``ready`` drives the readiness endpoints."""

    ttft_s: float = 0.0
    itl_s: float = 0.0
    ready: bool = True
    #: server-side clock (``time.perf_counter()``) per prompt: [request received, response 1 sent, ...]
    timeline: dict[str, list[float]] = field(default_factory=dict)
    stats: dict[str, Stats] = field(default_factory=lambda: {m: Stats() for m in MODELS})
    #: every request that passed the input checks, in arrival order: {"model", "inputs", "meta"}
    received: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, prompt: str, start: bool = False) -> None:
        t = time.perf_counter()
        with self.lock:
            if start:
                self.timeline[prompt] = [t]
            else:
                self.timeline.setdefault(prompt, []).append(t)

    def record(self, model: str, ok: bool, ns: int) -> None:
        with self.lock:
            s = self.stats[model]
            if ok:
                s.success += 1
                s.success_ns += ns
            else:
                s.fail += 1
                s.fail_ns += ns
            s.last_ms = int(time.time() * 1000)


def check_inputs(model: str, inputs: dict[str, tuple[str | None, list[int] | None]]) -> None:
    """Triton's checks of a request against the model's config (raises RequestError with Triton's wording):
    every input declared; datatype equal to the declared one; shape = [batch] + dims when
    ``max_batch_size`` > 0 (batch 1..max_batch_size), else dims, with -1 matching any size; every
    non-optional input present (plus ``text_input``, which the double needs). ``None`` datatype or shape:
    not carried by the transport (HTTP generate), not checked."""
    if model not in MODELS:
        raise RequestError(f"Request for unknown model: '{model}' is not found")
    m = MODELS[model]
    for name, (dtype, shape) in inputs.items():
        if name not in m["inputs"]:
            raise RequestError(f"[request id: <id_unknown>] unexpected inference input '{name}' for model '{model}'")
        want, dims, _ = m["inputs"][name]
        if dtype is not None and dtype != want:
            raise RequestError(f"[request id: <id_unknown>] inference input '{name}' data-type is '{dtype}', but "
                               f"model '{model}' expects '{want}'")
        if shape is not None:
            full = ([-1] + dims) if m["max_batch_size"] > 0 else dims
            batch_ok = m["max_batch_size"] == 0 or (shape and 1 <= shape[0] <= m["max_batch_size"])
            if len(shape) != len(full) or not batch_ok or any(f != -1 and f != g for f, g in zip(full, shape, strict=True)):
                raise RequestError(f"[request id: <id_unknown>] unexpected shape for input '{name}' for model "
                                   f"'{model}'. Expected {full}, got {shape}")
    need = {n for n, (_, _, opt) in m["inputs"].items() if not opt} | set(m["required"])
    missing = sorted(need - set(inputs))
    if missing:
        raise RequestError(f"[request id: <id_unknown>] expected {len(need)} inputs but got "
                           f"{len(need) - len(missing)} inputs for model '{model}'. Got input(s) {sorted(inputs)}, "
                           f"but missing required input(s) {missing}")


def make_plan(model: str, values: dict[str, list[Any]],
              meta: dict[str, tuple[str | None, list[int] | None]] | None = None,
              received: list[dict[str, Any]] | None = None) -> Plan:
    """Validate inputs like Triton would (:func:`check_inputs`; ``meta`` = {name: (datatype, shape)}),
    append ``{"model", "inputs": {name: values}, "meta"}`` to ``received``, and decide what to stream
    (raises RequestError)."""
    meta = meta if meta is not None else {n: (None, None) for n in values}
    check_inputs(model, meta)
    m = MODELS[model]
    if received is not None:
        received.append({"model": model, "inputs": dict(values), "meta": dict(meta)})
    raw = values["text_input"][0]
    prompt = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    max_tokens = int(values.get(m["max_key"], [16])[0])
    stream = bool(values.get(m["stream_key"], [False])[0])
    if "UTF8SPLIT" in prompt:
        data = UTF8_TEXT.encode()
        chunks = [data[i:i + 1] for i in range(len(data))]
    elif (tag := TAG_RE.search(prompt)) is not None:
        chunks = [f" {tag.group(1)}:{i}".encode() for i in range(max_tokens)]
    else:
        chunks = [CANNED[i % len(CANNED)].encode() for i in range(max_tokens)]
    plan = Plan(chunks, stream=stream, prompt=prompt)
    if (f := FAIL_RE.search(prompt)) is not None:
        plan.fail_after = int(f.group(1))
        plan.fail_message = f"injected failure after {plan.fail_after} tokens (Triton test double)"
    return plan


def _delays(b: Behaviour, i: int) -> float:
    return b.ttft_s if i == 0 else b.itl_s


# --- gRPC ---------------------------------------------------------------------------------------------

_FMT = {"INT32": "<i", "FP32": "<f", "UINT64": "<Q", "INT64": "<q", "FP64": "<d"}


def _decode_input(datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        out, i = [], 0
        while i + 4 <= len(raw):
            (n,) = struct.unpack_from("<I", raw, i)
            out.append(raw[i + 4:i + 4 + n])
            i += 4 + n
        return out
    if datatype == "BOOL":
        return [bool(x) for x in raw]
    fmt = _FMT[datatype]
    size = struct.calcsize(fmt)
    return [struct.unpack_from(fmt, raw, i)[0] for i in range(0, len(raw), size)]


def _grpc_values(req: Any) -> dict[str, list[Any]]:
    vals: dict[str, list[Any]] = {}
    for i, inp in enumerate(req.inputs):
        if i < len(req.raw_input_contents):
            vals[inp.name] = _decode_input(inp.datatype, req.raw_input_contents[i])
        else:
            c = inp.contents
            vals[inp.name] = list(c.bytes_contents or c.int_contents or c.fp32_contents or c.bool_contents
                                  or c.uint64_contents)
    return vals


def _grpc_meta(req: Any) -> dict[str, tuple[str | None, list[int] | None]]:
    return {inp.name: (inp.datatype, [int(d) for d in inp.shape]) for inp in req.inputs}


def _servicer(b: Behaviour):  # type: ignore[no-untyped-def]
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pbg

    def response(req: Any, data: bytes | None, final: bool | None) -> Any:
        r = pb.ModelInferResponse(model_name=req.model_name, model_version="1", id=req.id)
        if data is not None:
            r.outputs.add(name="text_output", datatype="BYTES", shape=[1, 1])
            r.raw_output_contents.append(struct.pack("<I", len(data)) + data)
        if final is not None:
            r.parameters["triton_final_response"].bool_param = final
        return r

    class Servicer(pbg.GRPCInferenceServiceServicer):
        async def ServerLive(self, request, context):  # noqa: N802
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request, context):  # noqa: N802
            return pb.ServerReadyResponse(ready=b.ready)

        async def ModelReady(self, request, context):  # noqa: N802
            return pb.ModelReadyResponse(ready=b.ready and request.name in MODELS)

        async def ServerMetadata(self, request, context):  # noqa: N802
            return pb.ServerMetadataResponse(**server_metadata())

        async def ModelMetadata(self, request, context):  # noqa: N802
            import grpc

            if request.name not in MODELS:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}' is not found")
            md = model_metadata(request.name)
            r = pb.ModelMetadataResponse(name=md["name"], versions=md["versions"], platform=md["platform"])
            for k in ("inputs", "outputs"):
                for t in md[k]:
                    getattr(r, k).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            return r

        async def RepositoryIndex(self, request, context):  # noqa: N802
            r = pb.RepositoryIndexResponse()
            for name in MODELS:
                r.models.add(name=name, version="1", state="READY" if b.ready else "UNAVAILABLE")
            return r

        async def ModelStatistics(self, request, context):  # noqa: N802
            from google.protobuf import json_format

            return json_format.ParseDict(model_stats(b, request.name or None), pb.ModelStatisticsResponse())

        async def ModelInfer(self, request, context):  # noqa: N802
            import grpc

            t0 = time.perf_counter_ns()
            try:
                plan = make_plan(request.model_name, _grpc_values(request), _grpc_meta(request), b.received)
            except RequestError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            await asyncio.sleep(b.ttft_s + b.itl_s * max(0, len(plan.chunks) - 1))
            if plan.fail_after is not None:
                b.record(request.model_name, False, time.perf_counter_ns() - t0)
                await context.abort(grpc.StatusCode.INTERNAL, plan.fail_message)
            b.record(request.model_name, True, time.perf_counter_ns() - t0)
            return response(request, b"".join(plan.chunks), None)

        async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
            q: asyncio.Queue = asyncio.Queue()
            tasks: set[asyncio.Task] = set()

            async def run(req: Any) -> None:
                t0 = time.perf_counter_ns()
                want_final = req.parameters["triton_enable_empty_final_response"].bool_param \
                    if "triton_enable_empty_final_response" in req.parameters else False
                try:
                    plan = make_plan(req.model_name, _grpc_values(req), _grpc_meta(req), b.received)
                except RequestError as e:
                    await q.put(pb.ModelStreamInferResponse(error_message=str(e), infer_response=response(req, None, None)))
                    return
                fin = False if want_final else None
                b.mark(plan.prompt, start=True)
                if not plan.stream:
                    await asyncio.sleep(b.ttft_s + b.itl_s * max(0, len(plan.chunks) - 1))
                    if plan.fail_after is not None:
                        await q.put(pb.ModelStreamInferResponse(error_message=plan.fail_message,
                                                                infer_response=response(req, None, None)))
                        b.record(req.model_name, False, time.perf_counter_ns() - t0)
                        return
                    await q.put(pb.ModelStreamInferResponse(
                        infer_response=response(req, b"".join(plan.chunks), True if want_final else None)))
                    b.record(req.model_name, True, time.perf_counter_ns() - t0)
                    return
                for i, chunk in enumerate(plan.chunks):
                    d = _delays(b, i)
                    if d:
                        await asyncio.sleep(d)
                    if plan.fail_after is not None and i >= plan.fail_after:
                        await q.put(pb.ModelStreamInferResponse(error_message=plan.fail_message,
                                                                infer_response=response(req, None, None)))
                        b.record(req.model_name, False, time.perf_counter_ns() - t0)
                        return
                    await q.put(pb.ModelStreamInferResponse(infer_response=response(req, chunk, fin)))
                    b.mark(plan.prompt)
                if want_final:
                    await q.put(pb.ModelStreamInferResponse(infer_response=response(req, None, True)))
                b.record(req.model_name, True, time.perf_counter_ns() - t0)

            async def reader() -> None:
                async for req in request_iterator:
                    t = asyncio.create_task(run(req))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks))
                await q.put(None)

            rt = asyncio.create_task(reader())
            try:
                while True:
                    item = await q.get()
                    if item is None:
                        break
                    yield item
            finally:
                rt.cancel()
                for t in list(tasks):
                    t.cancel()

    return Servicer()


# --- shared JSON documents --------------------------------------------------------------------------------

def server_metadata() -> dict[str, Any]:
    return {"name": "triton-test-double", "version": "0.0.0-test-double",
            "extensions": ["classification", "model_repository", "statistics", "generate"]}


def model_metadata(model: str) -> dict[str, Any]:
    m = MODELS[model]
    batched = m["max_batch_size"] > 0
    return {"name": model, "versions": ["1"], "platform": m["platform"],
            "inputs": [{"name": n, "datatype": d, "shape": ([-1] + dims) if batched else dims}
                       for n, (d, dims, _) in m["inputs"].items()],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1, -1] if batched else [-1]}]}


_JSON_OK = {"BYTES": (str,), "BOOL": (bool,), "INT32": (int,), "INT64": (int,), "UINT64": (int,),
            "FP32": (int, float), "FP64": (int, float)}


def _http_meta(model: str, obj: dict[str, Any]) -> dict[str, tuple[str | None, list[int] | None]]:
    """HTTP generate carries JSON values, not typed tensors: each value (or list element) must be a JSON
    type that converts to the declared datatype (a bool is not a number), and only [-1] dims take a list;
    the shape check is left to :func:`check_inputs` with shape None."""
    meta: dict[str, tuple[str | None, list[int] | None]] = {}
    decl = MODELS[model]["inputs"] if model in MODELS else {}
    for name, v in obj.items():
        if name in decl:
            want, dims, _ = decl[name]
            items = v if isinstance(v, list) else [v]
            if isinstance(v, list) and dims != [-1]:
                raise RequestError(f"input '{name}' for model '{model}': a list for dims {dims}")
            for x in items:
                if not isinstance(x, _JSON_OK[want]) or (want != "BOOL" and isinstance(x, bool)):
                    raise RequestError(f"input '{name}' for model '{model}': JSON value {x!r} is not {want}")
        meta[name] = (None, None)
    return meta


def model_stats(b: Behaviour, model: str | None) -> dict[str, Any]:
    with b.lock:
        rows = []
        for name, s in b.stats.items():
            if model and name != model:
                continue
            rows.append({"name": name, "version": "1", "last_inference": str(s.last_ms),
                         "inference_count": str(s.success), "execution_count": str(s.success),
                         "inference_stats": {"success": {"count": str(s.success), "ns": str(s.success_ns)},
                                             "fail": {"count": str(s.fail), "ns": str(s.fail_ns)}}})
    return {"model_stats": rows}


# --- HTTP ---------------------------------------------------------------------------------------------------

def _handler(b: Behaviour):  # type: ignore[no-untyped-def]
    class Handler(BaseHTTPRequestHandler):
        server_version = "triton-test-double"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _json(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _empty(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            p = self.path.rstrip("/")
            if p == "/v2/health/live":
                return self._empty(200)
            if p == "/v2/health/ready":
                return self._empty(200 if b.ready else 400)
            if p == "/v2":
                return self._json(200, server_metadata())
            m = re.fullmatch(r"/v2/models/([^/]+)(?:/versions/\d+)?(/ready|/stats)?", p)
            if m and m.group(1) in MODELS:
                if m.group(2) == "/ready":
                    return self._empty(200 if b.ready else 400)
                if m.group(2) == "/stats":
                    return self._json(200, model_stats(b, m.group(1)))
                return self._json(200, model_metadata(m.group(1)))
            if m:
                return self._json(400, {"error": f"Request for unknown model: '{m.group(1)}' is not found"})
            self._json(404, {"error": "Not Found"})

        def do_POST(self) -> None:  # noqa: N802
            m = re.fullmatch(r"/v2/models/([^/]+)(?:/versions/\d+)?/(generate|generate_stream)", self.path)
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            if self.path.rstrip("/") == "/v2/repository/index":
                return self._json(200, [{"name": name, "version": "1", "state": "READY" if b.ready else "UNAVAILABLE"}
                                        for name in MODELS])
            if not m:
                return self._json(404, {"error": "Not Found"})
            model, streaming = m.group(1), m.group(2) == "generate_stream"
            t0 = time.perf_counter_ns()
            try:
                obj = json.loads(body)
                vals = {k: (v if isinstance(v, list) else [v]) for k, v in obj.items()}
                plan = make_plan(model, vals, _http_meta(model, obj), b.received)
            except (ValueError, RequestError) as e:
                return self._json(400, {"error": str(e)})
            if not streaming:
                time.sleep(b.ttft_s + b.itl_s * max(0, len(plan.chunks) - 1))
                if plan.fail_after is not None:
                    b.record(model, False, time.perf_counter_ns() - t0)
                    return self._json(400, {"error": plan.fail_message})
                b.record(model, True, time.perf_counter_ns() - t0)
                text = b"".join(plan.chunks).decode("utf-8", "surrogateescape")
                return self._raw_json(200, {"model_name": model, "model_version": "1", "text_output": text})
            b.mark(plan.prompt, start=True)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for i, chunk in enumerate(plan.chunks):
                    d = _delays(b, i)
                    if d:
                        time.sleep(d)
                    if plan.fail_after is not None and i >= plan.fail_after:
                        self.wfile.write(b"data: " + json.dumps({"error": plan.fail_message}).encode() + b"\n\n")
                        self.wfile.flush()
                        b.record(model, False, time.perf_counter_ns() - t0)
                        return
                    doc = {"model_name": model, "model_version": "1",
                           "text_output": chunk.decode("utf-8", "surrogateescape")}
                    # raw bytes inside the JSON string, as Triton writes BYTES tensors (may split UTF-8)
                    line = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogateescape")
                    self.wfile.write(b"data: " + line + b"\n\n")
                    self.wfile.flush()
                    b.mark(plan.prompt)
                b.record(model, True, time.perf_counter_ns() - t0)
            except (BrokenPipeError, ConnectionResetError):
                b.record(model, False, time.perf_counter_ns() - t0)

        def _raw_json(self, code: int, obj: Any) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogateescape")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


class TritonDouble:
    """Start/stop both endpoints on 127.0.0.1 (port 0 picks a free port). ``behaviour`` may be changed
    while running. Use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, grpc_port: int = 0, http_port: int = 0, behaviour: Behaviour | None = None,
                 host: str = "127.0.0.1") -> None:
        self.behaviour = behaviour or Behaviour()
        self.host = host
        self._want = (grpc_port, http_port)
        self.grpc_port = 0
        self.http_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grpc: Any = None
        self._threads: list[threading.Thread] = []
        self._http: _HTTPServer | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def start(self) -> TritonDouble:
        import grpc
        from tritonclient.grpc import service_pb2_grpc as pbg

        ready = threading.Event()
        err: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def main() -> None:
                self._grpc = grpc.aio.server(options=[("grpc.max_concurrent_streams", 4096),
                                                      ("grpc.so_reuseport", 0)])
                pbg.add_GRPCInferenceServiceServicer_to_server(_servicer(self.behaviour), self._grpc)
                self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{self._want[0]}")
                await self._grpc.start()

            try:
                loop.run_until_complete(main())
            except BaseException as e:  # noqa: BLE001
                err.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        t = threading.Thread(target=serve, name="triton-double-grpc", daemon=True)
        t.start()
        ready.wait(30)
        if err:
            raise err[0]
        self._http = _HTTPServer((self.host, self._want[1]), _handler(self.behaviour))
        self.http_port = self._http.server_address[1]
        h = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                             name="triton-double-http", daemon=True)
        h.start()
        self._threads = [t, h]
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._loop is not None and self._grpc is not None:
            fut = asyncio.run_coroutine_threadsafe(self._grpc.stop(0.5), self._loop)
            try:
                fut.result(5)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> TritonDouble:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Triton protocol TEST DOUBLE (no model; canned tokens).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first token (ms)")
    ap.add_argument("--itl-ms", type=float, default=0.0, help="delay between tokens (ms)")
    a = ap.parse_args(argv)
    d = TritonDouble(a.grpc_port, a.http_port, Behaviour(ttft_s=a.ttft_ms / 1000, itl_s=a.itl_ms / 1000), a.host)
    d.start()
    print(f"Triton TEST DOUBLE: gRPC {d.grpc_url}  HTTP {d.http_url}  (ttft {a.ttft_ms} ms, itl {a.itl_ms} ms)",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        d.stop()


if __name__ == "__main__":
    main()
