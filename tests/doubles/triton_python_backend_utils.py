"""Test double of Triton's Python-backend utility module ``triton_python_backend_utils``.

tritonserver cannot run here, so the project's Python models are exercised in-process against this
stand-in. It mirrors the subset of the real module's API they use (Tensor, InferenceRequest with
``exec``, InferenceResponse, TritonError, get_input_tensor_by_name, get_output_tensor_by_name,
get_output_config_by_name, triton_string_to_numpy, using_decoupled_model_transaction_policy,
TRITONSERVER_RESPONSE_COMPLETE_FINAL, a thread-safe decoupled response sender, request cancellation through
``InferenceRequest.is_cancelled`` / ``cancel()``, ``TritonError`` codes, ``Logger``). BLS calls
(``InferenceRequest.exec``) are
routed to handlers registered in :data:`MODELS` by the test, after the request's tensor names are checked
against the callee's ``config.pbtxt`` registered in :data:`CONFIGS` (:func:`register_config`), as Triton
checks a BLS request: every input declared, every non-optional input present, every requested output
declared; the callee's response may only carry declared outputs. A call to a model without a registered
config is refused (Triton would not find the model).

"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

#: model name -> handler(request, decoupled) returning one response or an iterable of responses
MODELS: dict[str, Callable[[InferenceRequest, bool], Any]] = {}

#: model name -> its ModelConfig as a dict (json_format.MessageToDict of the built config.pbtxt,
#: preserving_proto_field_name=True): the names exec() checks against
CONFIGS: dict[str, dict[str, Any]] = {}


def register_config(config: dict[str, Any]) -> None:
    """Declare a callee: ``config`` parsed from the ``config.pbtxt`` that ``dsv3ctl repo build`` wrote."""
    CONFIGS[config["name"]] = config


def check_request_names(request: InferenceRequest) -> None:
    """Raise TritonModelException (Triton's error for a bad BLS request) when ``request`` does not fit the
    callee's registered config: unknown model, undeclared input, missing non-optional input, or an
    undeclared requested output."""
    cfg = CONFIGS.get(request.model_name)
    if cfg is None:
        raise TritonModelException(f"Failed for execute the inference request. Model '{request.model_name}' "
                                   "is not ready (no config registered with the test double).")
    declared = {t["name"]: t for t in cfg.get("input", [])}
    names = [t.name() for t in request.inputs()]
    unknown = sorted(set(names) - set(declared))
    if unknown:
        raise TritonModelException(f"unexpected inference input(s) {unknown} for model '{request.model_name}'")
    missing = sorted(n for n, t in declared.items() if not t.get("optional") and n not in names)
    if missing:
        raise TritonModelException(f"missing required input(s) {missing} for model '{request.model_name}'")
    outputs = {t["name"] for t in cfg.get("output", [])}
    bad = sorted(set(request.requested_output_names) - outputs)
    if bad:
        raise TritonModelException(f"unexpected requested output(s) {bad} for model '{request.model_name}'")


def check_response_names(model_name: str, response: Any) -> None:
    """Raise TritonModelException when a callee's response carries an output its config does not declare."""
    if not isinstance(response, InferenceResponse):
        return
    outputs = {t["name"] for t in CONFIGS[model_name].get("output", [])}
    bad = sorted({t.name() for t in response.output_tensors()} - outputs)
    if bad:
        raise TritonModelException(f"model '{model_name}' returned undeclared output(s) {bad}")


_NP = {"TYPE_BOOL": np.bool_, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_UINT64": np.uint64,
       "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_STRING": np.object_, "TYPE_UINT8": np.uint8}


class TritonError:
    # the code names of the real module (python_backend src/pb_stub.cc binds TRITONSERVER_Error_Code by name)
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 0) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Logger:
    """Collects log lines (the real Logger writes to tritonserver's log)."""

    lines: list[tuple[str, str]] = []

    @classmethod
    def log_info(cls, msg: str) -> None:
        cls.lines.append(("info", msg))

    @classmethod
    def log_warn(cls, msg: str) -> None:
        cls.lines.append(("warn", msg))

    @classmethod
    def log_error(cls, msg: str) -> None:
        cls.lines.append(("error", msg))


class TritonModelException(Exception):
    pass


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name = name
        self._array = np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self._tensors = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class ResponseSender:
    """Collects what a decoupled model sends (from any thread); ``closed`` after the FINAL flag.

    A send after FINAL raises (as the real sender does) and is also recorded in ``violations``, since a model
    thread may swallow the exception. ``times`` holds the ``time.monotonic()`` of every send; :meth:`wait`
    blocks until FINAL or the deadline."""

    def __init__(self, request: InferenceRequest | None = None) -> None:
        self.responses: list[InferenceResponse] = []
        self.times: list[float] = []
        self.violations: list[str] = []
        self.closed = False
        self._request = request
        self._lock = threading.Lock()
        self._done = threading.Event()

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        with self._lock:
            if self.closed:
                self.violations.append("send after TRITONSERVER_RESPONSE_COMPLETE_FINAL")
                raise TritonModelException("send after TRITONSERVER_RESPONSE_COMPLETE_FINAL")
            if response is not None:
                self.responses.append(response)
            self.times.append(time.monotonic())
            if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                self.closed = True
                self._done.set()

    def is_cancelled(self) -> bool:
        return self._request is not None and self._request.is_cancelled()

    def wait(self, timeout: float) -> bool:
        """True once FINAL was sent; False when ``timeout`` seconds passed first."""
        return self._done.wait(timeout)


class InferenceRequest:
    def __init__(self, model_name: str = "", inputs: list[Tensor] | None = None,
                 requested_output_names: list[str] | None = None, request_id: str = "", **_: Any) -> None:
        self.model_name = model_name
        self._inputs = list(inputs or [])
        self.requested_output_names = list(requested_output_names or [])
        self._sender = ResponseSender(self)
        self._cancelled = threading.Event()
        self._id = request_id

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def get_response_sender(self) -> ResponseSender:
        return self._sender

    def request_id(self) -> str:
        return self._id

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Test hook: the client went away (the real server sets this when the connection drops)."""
        self._cancelled.set()

    def exec(self, decoupled: bool = False) -> Any:
        check_request_names(self)
        result = MODELS[self.model_name](self, decoupled)
        for r in result if isinstance(result, list) else [result]:
            check_response_names(self.model_name, r)
        if decoupled:
            return iter(result if isinstance(result, list) else [result])
        return result[-1] if isinstance(result, list) else result


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((o for o in model_config.get("output", []) if o["name"] == name), None)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((o for o in model_config.get("input", []) if o["name"] == name), None)


def triton_string_to_numpy(data_type: str) -> Any:
    return _NP[data_type]


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))
