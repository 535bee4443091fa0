"""The llmapi Triton model (model_repo/llmapi/1/model.py) in-process, against two test doubles: Triton's
``triton_python_backend_utils`` (tests/doubles/triton_python_backend_utils.py) and TensorRT-LLM's LLM API
(tests/doubles/llmapi_llm.py: an async generator with a per-token delay, installed as ``tensorrt_llm``).

Triton calls ``execute`` from one thread; here too. Concurrency is shown by a relative bound: 8 requests handed
to ``execute`` one after another finish within 1.5x the time of one (a model that generates inside
``execute`` takes ~8x)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from dsv3ctl.core import contracts
from dsv3ctl.render import model_repo as R

DOUBLES = Path(__file__).parent / "doubles"
WAIT_S = 30.0  # deadline for any one request to close its stream


@pytest.fixture
def llmapi_repo(tmp_path, run_cli, write_spec):
    spec = write_spec({"serving": {"mode": "llmapi"}})
    r = run_cli("repo", "build", "--spec", spec, "--out", tmp_path / "l", "--model-path", "/models/DeepSeek-V3")
    assert r.code == 0, r.err
    return tmp_path / "l"


@pytest.fixture
def load(llmapi_repo, monkeypatch):
    """Load the model the way Triton's Python backend does; returns (model, pb_utils, llm double module)."""
    if str(DOUBLES) not in sys.path:
        monkeypatch.syspath_prepend(str(DOUBLES))
    pb = importlib.import_module("triton_python_backend_utils")
    llm = importlib.import_module("llmapi_llm")
    monkeypatch.setitem(sys.modules, "tensorrt_llm", llm)
    monkeypatch.setitem(llm.CONFIG, "tokens", 10)
    monkeypatch.setitem(llm.CONFIG, "token_delay_s", 0.05)
    models = []

    def _load(config_edit=None):
        from google.protobuf import text_format

        repo = llmapi_repo / R.LLMAPI_MODEL
        cfg = text_format.Parse((repo / "config.pbtxt").read_text(), R._pb().ModelConfig())
        if config_edit:
            config_edit(cfg)
        spec = importlib.util.spec_from_file_location("_model_llmapi", repo / "1" / "model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        model = mod.TritonPythonModel()
        model.initialize({"model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
                          "model_repository": str(repo), "model_version": "1", "model_name": R.LLMAPI_MODEL})
        models.append(model)
        return model

    yield _load, pb, llm
    for m in models:
        m.finalize()


def _req(pb, prompt="hello", streaming=False, **extra):
    inputs = [pb.Tensor("text_input", np.array([prompt.encode()], dtype=object)),
              pb.Tensor("streaming", np.array([streaming], dtype=bool))]
    inputs += [pb.Tensor(k, v) for k, v in extra.items()]
    return pb.InferenceRequest(inputs=inputs)


def _texts(sender):
    return [r.output_tensors()[0].as_numpy()[0].decode() for r in sender.responses if not r.has_error()]


def _run(model, reqs) -> float:
    """Hand every request to execute() (one call each, as Triton's single thread would), wait for all
    streams to close; returns the wall seconds from the first execute to the last FINAL."""
    t0 = time.monotonic()
    for r in reqs:
        assert model.execute([r]) is None  # decoupled: responses go through each request's sender
    for r in reqs:
        assert r.get_response_sender().wait(WAIT_S), "a request's stream was not closed within 30 s"
    return max(r.get_response_sender().times[-1] for r in reqs) - t0


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "non-streaming"])
def test_eight_concurrent_requests_take_at_most_1_5x_one(load, streaming):
    load_model, pb, _ = load
    model = load_model()
    one = _run(model, [_req(pb, streaming=streaming)])
    reqs = [_req(pb, f"p{i}", streaming=streaming) for i in range(8)]
    eight = _run(model, reqs)
    assert eight <= 1.5 * one, f"8 concurrent requests took {eight:.3f} s, one took {one:.3f} s"
    expected = "".join(f"t{i} " for i in range(10))
    for r in reqs:
        s = r.get_response_sender()
        assert not s.violations and not any(x.has_error() for x in s.responses)
        if streaming:
            assert len(s.responses) == 10 and "".join(_texts(s)) == expected  # deltas add up to the text
        else:
            assert _texts(s) == [expected]
        reason = s.responses[-1].output_tensors()[1].as_numpy()[0].decode()
        assert reason == "length"


def test_execute_returns_before_generation_ends(load):
    load_model, pb, _ = load
    model = load_model()
    r = _req(pb, streaming=True)
    t0 = time.monotonic()
    model.execute([r])
    returned = time.monotonic() - t0
    assert r.get_response_sender().wait(WAIT_S)
    total = r.get_response_sender().times[-1] - t0
    assert returned < total / 5, (returned, total)  # 10 tokens x 50 ms are generated after execute returned


def test_cancelled_request_is_aborted_and_closed_with_cancelled_error(load):
    load_model, pb, llm = load
    model = load_model()
    r, other = _req(pb, "to-cancel", streaming=True), _req(pb, "keeps-going", streaming=True)
    model.execute([r])
    model.execute([other])
    sender = r.get_response_sender()
    deadline = time.monotonic() + WAIT_S
    while len(sender.responses) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    r.cancel()  # the client went away
    assert sender.wait(WAIT_S)
    last = sender.responses[-1]
    assert last.has_error() and last.error().code() == pb.TritonError.CANCELLED
    result = next(x for x in llm.INSTANCES[-1].results if x.prompt == "to-cancel")
    assert result.aborted and result.tokens_made < 10  # the LLM API request was aborted, not run to its end
    assert other.get_response_sender().wait(WAIT_S)
    assert "".join(_texts(other.get_response_sender())) == "".join(f"t{i} " for i in range(10))
    time.sleep(0.2)  # the cancelled coroutine must not send after FINAL
    assert not sender.violations and not other.get_response_sender().violations


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "non-streaming"])
def test_error_mid_stream_goes_to_that_request_only(load, streaming):
    load_model, pb, _ = load
    model = load_model()
    bad, good = _req(pb, "fail-after:3", streaming=streaming), _req(pb, "fine", streaming=streaming)
    _run(model, [bad, good])
    s = bad.get_response_sender()
    assert s.closed and not s.violations
    assert s.responses[-1].has_error()
    assert "RuntimeError: generation failed after 3 tokens" in s.responses[-1].error().message()
    if streaming:
        assert _texts(s) == ["t0 ", "t1 ", "t2 "]  # what was generated before the failure was streamed
    assert not any(x.has_error() for x in good.get_response_sender().responses)


def test_bad_input_and_streaming_without_decoupled(load):
    load_model, pb, _ = load
    model = load_model()
    r = pb.InferenceRequest(inputs=[pb.Tensor("streaming", np.array([True]))])
    model.execute([r])
    assert r.get_response_sender().wait(WAIT_S)
    assert "text_input is missing" in r.get_response_sender().responses[-1].error().message()
    # a SamplingParams field TensorRT-LLM 1.0 does not have is never passed; beam width maps to best_of
    r = _req(pb, sampling_param_beam_width=np.array([4], dtype=np.int32),
             sampling_param_max_tokens=np.array([3], dtype=np.int32))
    model.execute([r])
    assert r.get_response_sender().wait(WAIT_S)
    assert _texts(r.get_response_sender()) == ["t0 t1 t2 "]

    def coupled(cfg):
        cfg.model_transaction_policy.decoupled = False

    plain = load_model(coupled)
    [resp] = plain.execute([_req(pb, streaming=True)])
    assert resp.has_error() and "decoupled" in resp.error().message()
    [resp] = plain.execute([_req(pb, streaming=False)])
    assert resp.output_tensors()[0].as_numpy()[0].decode() == "".join(f"t{i} " for i in range(10))


def test_config_file_parameter_is_read(load, llmapi_repo):
    load_model, pb, llm = load
    src = llmapi_repo / R.LLMAPI_MODEL / "1" / "model.yaml"
    (src.parent / "other.yaml").write_text(src.read_text().replace("max_batch_size: 4", "max_batch_size: 3"))

    def point(cfg):
        cfg.parameters["llm_config_file"].string_value = "other.yaml"

    load_model(point)
    assert llm.INSTANCES[-1].args["max_batch_size"] == 3
    assert "triton_config" not in llm.INSTANCES[-1].args
    # a key TensorRT-LLM 1.0 does not have fails the load, as LLM(**args) would
    (src.parent / "bad.yaml").write_text(src.read_text() + "attention_dp_config: {enable_balance: true}\n")

    def bad(cfg):
        cfg.parameters["llm_config_file"].string_value = "bad.yaml"

    with pytest.raises(TypeError, match="attention_dp_config"):
        load_model(bad)


def test_sampling_fields_exist_in_the_pinned_sampling_params():
    """Every SamplingParams field the model can set is a field of TensorRT-LLM 1.0's SamplingParams (contract
    data read from tensorrt_llm/sampling_params.py), and the double refuses what the real class refuses."""
    sys.path.insert(0, str(DOUBLES))
    try:
        import llmapi_llm
    finally:
        sys.path.remove(str(DOUBLES))
    spec = importlib.util.spec_from_file_location("_model_src", Path(R.__file__).parents[2] / "model_repo" /
                                                  "llmapi" / "1" / "model.py")
    src = (Path(spec.origin)).read_text()
    assert "beam_width" not in contracts.load("sampling_params").items
    fields: set[str] = set()
    for node in ast.parse(src).body:  # SAMPLING / SAMPLING_FIELDS, read without importing the model
        if isinstance(node, ast.Assign) and node.targets[0].id == "SAMPLING":
            fields |= set(ast.literal_eval(node.value).values())
        if isinstance(node, ast.Assign) and node.targets[0].id == "SAMPLING_FIELDS":
            for s in ast.walk(node.value):
                if isinstance(s, ast.Set):
                    fields |= {ast.literal_eval(e) for e in s.elts}
    assert {"max_tokens", "best_of", "use_beam_search", "n", "stop", "exclude_input_from_output"} <= fields
    assert contracts.load("sampling_params").missing(sorted(fields)) == []
    with pytest.raises(TypeError, match="beam_width"):
        llmapi_llm.SamplingParams(beam_width=2)
