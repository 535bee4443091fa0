"""Triton Inference Server clients: streamed generation over gRPC and HTTP, health/metadata/statistics.

Generation (asyncio, so one process drives hundreds of concurrent streams):

- gRPC: one ``ModelStreamInfer`` bidirectional stream per request on a shared ``grpc.aio`` channel, using
  the generated stubs and messages that tritonclient ships (``tritonclient.grpc.service_pb2[_grpc]``).
  Each request sets ``triton_enable_empty_final_response`` so the end of a decoupled response stream is
  known (``triton_final_response`` response parameter). One stream per request — rather than many
  requests multiplexed on tritonclient's single ``start_stream`` stream — because Triton's stream error
  responses carry no request id through tritonclient's callback, so an error could not be pinned on the
  request that caused it. A server error (``error_message``) ends only that request; its stream is
  cancelled cleanly and the error text is raised as :class:`ServerError`.
- HTTP: Triton's generate extension with httpx: ``POST /v2/models/<m>/generate`` (one JSON document) and
  ``/generate_stream`` (server-sent events, one ``data: {json}`` per response; ``{"error": ...}`` events
  and non-200 replies become :class:`ServerError`).

Output ``text_output`` arrives as bytes per response; they are decoded with an incremental UTF-8 decoder,
so a character split across responses is reassembled (the HTTP path recovers raw bytes from JSON strings
with ``surrogateescape``).

Health, metadata and statistics use tritonclient's synchronous clients (``tritonclient.grpc`` /
``tritonclient.http``). Timeouts are seconds everywhere in dsv3ctl; they are converted here (gRPC
deadlines and tritonclient ``client_timeout`` are seconds, tritonclient's per-request ``timeout`` is
microseconds, httpx is seconds).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from dsv3ctl.errors import RuntimeFailure, SpecError
from dsv3ctl.render.clients import OUTPUT_TENSOR, TensorSpec

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ServerError(RuntimeFailure):
    """The server answered a request with an error; ``message`` is the server's text."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to talk to Triton. ``url`` is ``HOST:PORT`` (gRPC default port 8001, HTTP 8000);
    ``timeout_s`` bounds one whole request, ``connect_timeout_s`` the connection set-up (seconds);
    ``max_message_bytes`` caps gRPC messages both ways."""

    url: str
    protocol: str = "grpc"
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.protocol not in ("grpc", "http"):
            raise SpecError(f"--protocol must be grpc or http, got {self.protocol!r}")
        u = self.url
        for pre in ("http://", "https://", "grpc://"):
            if u.startswith(pre):
                object.__setattr__(self, "url", u[len(pre):].rstrip("/"))
        if ":" not in self.url:
            raise SpecError(f"--url must be HOST:PORT, got {u!r}")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise SpecError("timeouts must be > 0 seconds")


@dataclass
class Chunk:
    """One streamed response: decoded ``text`` (may be empty while a UTF-8 character is incomplete),
    ``nbytes`` raw output bytes, arrival time ``t`` (``time.perf_counter()`` seconds)."""

    text: str
    nbytes: int
    t: float


# --- tensor (de)serialisation in Triton's raw binary layout ----------------------------------------------

_FMT = {"INT32": "<i", "FP32": "<f", "UINT64": "<Q", "INT64": "<q", "FP64": "<d"}


def _encode(t: TensorSpec) -> bytes:
    if t.datatype == "BYTES":
        out = bytearray()
        for v in t.values:
            b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            out += struct.pack("<I", len(b)) + b
        return bytes(out)
    if t.datatype == "BOOL":
        return bytes(1 if v else 0 for v in t.values)
    fmt = _FMT[t.datatype]
    return b"".join(struct.pack(fmt, v) for v in t.values)


def decode_bytes_tensor(raw: bytes) -> list[bytes]:
    """Split a raw BYTES tensor (4-byte little-endian length + payload per element)."""
    out, i, n = [], 0, len(raw)
    while i + 4 <= n:
        (ln,) = struct.unpack_from("<I", raw, i)
        out.append(raw[i + 4:i + 4 + ln])
        i += 4 + ln
    return out


def _text_bytes_from_json(value: Any) -> bytes:
    if isinstance(value, list):
        return b"".join(_text_bytes_from_json(v) for v in value)
    if not isinstance(value, str):
        return str(value).encode()
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace")


# --- generation ------------------------------------------------------------------------------------------

class GenClient:
    """Async generation client for one endpoint; use as ``async with GenClient(ep) as c``.

    :meth:`stream` yields :class:`Chunk` s for one request and raises :class:`ServerError` (server's
    text), or RuntimeFailure for transport failures and timeouts.
    """

    def __init__(self, endpoint: Endpoint, max_streams: int = 1024) -> None:
        self.ep = endpoint
        self._max_streams = max_streams
        self._channel: Any = None
        self._stub: Any = None
        self._http: Any = None

    async def __aenter__(self) -> GenClient:
        if self.ep.protocol == "grpc":
            import grpc
            from tritonclient.grpc import service_pb2_grpc

            opts = [("grpc.max_send_message_length", self.ep.max_message_bytes),
                    ("grpc.max_receive_message_length", self.ep.max_message_bytes),
                    ("grpc.max_concurrent_streams", self._max_streams)]
            self._channel = grpc.aio.insecure_channel(self.ep.url, options=opts)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        else:
            import httpx

            self._http = httpx.AsyncClient(
                base_url=f"http://{self.ep.url}",
                timeout=httpx.Timeout(self.ep.timeout_s, connect=self.ep.connect_timeout_s),
                limits=httpx.Limits(max_connections=self._max_streams, max_keepalive_connections=self._max_streams),
            )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._http is not None:
            await self._http.aclose()

    def stream(self, model: str, tensors: list[TensorSpec], body: dict[str, Any], stream: bool,
               request_id: str = "") -> AsyncIterator[Chunk]:
        """Run one request. gRPC sends ``tensors``; HTTP sends ``body`` to ``generate_stream`` when
        ``stream`` else ``generate``."""
        if self.ep.protocol == "grpc":
            return self._grpc_stream(model, tensors, request_id)
        return self._http_stream(model, body, stream)

    async def _grpc_stream(self, model: str, tensors: list[TensorSpec], request_id: str) -> AsyncIterator[Chunk]:
        import grpc
        from tritonclient.grpc import service_pb2

        req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
        for t in tensors:
            req.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
            req.raw_input_contents.append(_encode(t))
        req.outputs.add(name=OUTPUT_TENSOR)
        req.parameters["triton_enable_empty_final_response"].bool_param = True
        done = asyncio.Event()

        async def requests():  # keep the client side open until the last response arrived
            yield req
            await done.wait()

        call = self._stub.ModelStreamInfer(requests(), timeout=self.ep.timeout_s)
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            async for resp in call:
                t_resp = time.perf_counter()
                if resp.error_message:
                    raise ServerError(resp.error_message)
                ir = resp.infer_response
                raw = b""
                for i, o in enumerate(ir.outputs):
                    if o.name == OUTPUT_TENSOR:
                        if i < len(ir.raw_output_contents):
                            raw = b"".join(decode_bytes_tensor(ir.raw_output_contents[i]))
                        else:
                            raw = b"".join(o.contents.bytes_contents)
                if raw:
                    yield Chunk(dec.decode(raw), len(raw), t_resp)
                fin = ir.parameters.get("triton_final_response")
                if fin is not None and fin.bool_param:
                    break
            tail = dec.decode(b"", final=True)
            if tail:
                yield Chunk(tail, 0, time.perf_counter())
        except grpc.aio.AioRpcError as e:
            raise _grpc_failure(e, self.ep) from None
        finally:
            done.set()
            if not call.done():
                call.cancel()

    async def _http_stream(self, model: str, body: dict[str, Any], stream: bool) -> AsyncIterator[Chunk]:
        import httpx

        path = f"/v2/models/{model}/{'generate_stream' if stream else 'generate'}"
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            async with self._http.stream("POST", path, json=body) as r:
                if r.status_code != 200:
                    raise ServerError(_http_error_text(await r.aread(), r.status_code))
                if not stream:
                    data = await r.aread()
                    t = time.perf_counter()
                    raw = _text_bytes_from_json(json.loads(data).get(OUTPUT_TENSOR, ""))
                    yield Chunk(dec.decode(raw, final=True), len(raw), t)
                    return
                buf = b""
                async for piece in r.aiter_raw():
                    buf += piece
                    while True:
                        cut = _event_end(buf)
                        if cut is None:
                            break
                        event, buf = buf[:cut[0]], buf[cut[1]:]
                        t = time.perf_counter()
                        payload = b"\n".join(line[5:].lstrip(b" ") for line in event.splitlines()
                                             if line.startswith(b"data:"))
                        if not payload:
                            continue
                        obj = json.loads(payload.decode("utf-8", "surrogateescape"))
                        if "error" in obj:
                            raise ServerError(str(obj["error"]))
                        raw = _text_bytes_from_json(obj.get(OUTPUT_TENSOR, ""))
                        if raw:
                            yield Chunk(dec.decode(raw), len(raw), t)
                tail = dec.decode(b"", final=True)
                if tail:
                    yield Chunk(tail, 0, time.perf_counter())
        except httpx.TimeoutException:
            raise RuntimeFailure(f"request to {self.ep.url} timed out after {self.ep.timeout_s:g} s",
                                 hint="raise --timeout") from None
        except httpx.TransportError as e:
            raise RuntimeFailure(f"cannot reach Triton HTTP at {self.ep.url}: {e or type(e).__name__}",
                                 hint="check --url/--protocol (HTTP is usually port 8000)") from None


def _event_end(buf: bytes) -> tuple[int, int] | None:
    i, j = buf.find(b"\n\n"), buf.find(b"\r\n\r\n")
    if i < 0 and j < 0:
        return None
    if j >= 0 and (i < 0 or j < i):
        return j, j + 4
    return i, i + 2


def _http_error_text(data: bytes, status: int) -> str:
    try:
        obj = json.loads(data)
        if isinstance(obj, dict) and "error" in obj:
            return str(obj["error"])
    except ValueError:
        pass
    return f"HTTP {status}: {data.decode('utf-8', 'replace')[:500]}"


def _grpc_failure(e: Any, ep: Endpoint) -> RuntimeFailure:
    import grpc

    code = e.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RuntimeFailure(f"request to {ep.url} timed out after {ep.timeout_s:g} s", hint="raise --timeout")
    if code == grpc.StatusCode.UNAVAILABLE:
        return RuntimeFailure(f"cannot reach Triton gRPC at {ep.url}: {e.details()}",
                              hint="check --url/--protocol (gRPC is usually port 8001)")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RuntimeFailure(f"gRPC message too large: {e.details()}", hint="raise --max-message-mb")
    return ServerError(e.details() or str(code))


# --- health / metadata / statistics ------------------------------------------------------------------------

def health(ep: Endpoint, model: str | None) -> dict[str, Any]:
    """Liveness, readiness, server metadata and (with ``model``) model readiness, metadata and
    statistics, as one dict. Unreachable servers give ``live: False`` and an ``error`` text."""
    out: dict[str, Any] = {"url": ep.url, "protocol": ep.protocol, "live": False, "ready": False,
                           "model": model, "model_ready": None, "server": None, "metadata": None,
                           "statistics": None, "error": None}
    try:
        from tritonclient.utils import InferenceServerException
    except ImportError as e:  # pragma: no cover
        raise RuntimeFailure(f"tritonclient is not installed: {e}") from None
    try:
        if ep.protocol == "grpc":
            import tritonclient.grpc as tg

            c: Any = tg.InferenceServerClient(ep.url, channel_args=[
                ("grpc.max_send_message_length", ep.max_message_bytes),
                ("grpc.max_receive_message_length", ep.max_message_bytes)])
            kw: dict[str, Any] = {"client_timeout": ep.timeout_s}
            js: dict[str, Any] = {"as_json": True, **kw}
        else:
            import tritonclient.http as th

            c = th.InferenceServerClient(ep.url, connection_timeout=ep.connect_timeout_s,
                                         network_timeout=ep.timeout_s)
            kw, js = {}, {}
        try:
            out["live"] = bool(c.is_server_live(**kw))
            out["ready"] = bool(c.is_server_ready(**kw))
            out["server"] = c.get_server_metadata(**js)
            if model:
                out["model_ready"] = bool(c.is_model_ready(model, **kw))
                if out["model_ready"]:
                    out["metadata"] = c.get_model_metadata(model, **js)
                    out["statistics"] = c.get_inference_statistics(model, **js)
        finally:
            c.close()
    except InferenceServerException as e:
        out["error"] = e.message() if callable(getattr(e, "message", None)) else str(e)
    except Exception as e:  # noqa: BLE001 - transport errors of gevent/grpc: report, don't trace
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def model_presence(ep: Endpoint, model: str) -> tuple[bool | None, list[str] | None]:
    """(is ``model`` ready on the server, names of the models in the repository index).

    Either item is None when the server could not tell (unreachable, or no repository index API): the
    caller then falls back to its own message. Never raises for transport errors."""
    ready: bool | None = None
    names: list[str] | None = None
    try:
        if ep.protocol == "grpc":
            import tritonclient.grpc as tg

            c: Any = tg.InferenceServerClient(ep.url)
            kw: dict[str, Any] = {"client_timeout": min(ep.timeout_s, ep.connect_timeout_s)}
        else:
            import tritonclient.http as th

            c = th.InferenceServerClient(ep.url, connection_timeout=ep.connect_timeout_s,
                                         network_timeout=min(ep.timeout_s, ep.connect_timeout_s))
            kw = {}
        try:
            try:
                ready = bool(c.is_model_ready(model, **kw))
            except Exception:  # noqa: BLE001 - unknown model or transport error: "cannot tell"
                ready = None
            try:
                idx = c.get_model_repository_index(**({"as_json": True, **kw} if ep.protocol == "grpc" else {}))
                rows = idx.get("models", []) if isinstance(idx, dict) else idx
                names = sorted({str(r.get("name")) for r in rows or [] if r.get("name")})
            except Exception:  # noqa: BLE001 - index API not available
                names = None
        finally:
            c.close()
    except Exception:  # noqa: BLE001 - client construction failed: cannot tell
        return None, None
    return ready, names


def require_model(ep: Endpoint, model: str) -> None:
    """RuntimeFailure (exit 1) when the server says ``model`` is not there (or not ready), listing the
    models it has when the repository index is available; returns quietly when it is ready or the server
    cannot tell."""
    ready, names = model_presence(ep, model)
    if ready or (ready is None and names is None):
        return
    if names is not None and model in names and ready is None:
        return
    where = f"Triton at {ep.url} ({ep.protocol})"
    if names is not None and model not in names:
        have = ", ".join(names) if names else "none"
        raise RuntimeFailure(f"model {model!r} is not on {where}; models there: {have}",
                             hint="pass --model with one of those names")
    raise RuntimeFailure(f"model {model!r} is not ready on {where}",
                         hint=f"check `dsv3ctl health --url {ep.url} --protocol {ep.protocol} --model {model}`")
