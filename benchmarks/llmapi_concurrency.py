"""Concurrency of the llmapi Triton model (model_repo/llmapi/1/model.py): time for 8 concurrent requests vs 1.

Builds an llmapi model repository with dsv3ctl (default spec, ``serving.mode: llmapi``), loads the model in
this process against the TEST DOUBLES of Triton's ``triton_python_backend_utils`` and of TensorRT-LLM's LLM
API (tests/doubles/llmapi_llm.py: ``--tokens`` tokens per request, ``--delay-ms`` of asyncio.sleep per
token), and, as Triton's single execute thread would, calls ``execute([request])`` once per request. The
wall time runs from the first execute to the last response with the FINAL flag. Reported per mode
(streaming / non-streaming): the median of ``--rounds`` rounds for 1 request and for ``--concurrency``
requests, and their ratio (1.0 = fully concurrent; a model that generates inside execute() gives about
``--concurrency``). Figures go to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/llmapi_concurrency.py --tokens 10 --delay-ms 50 --concurrency 8 --rounds 5
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "doubles"))

WAIT_S = 60.0


def load_model(tmp: Path):
    import numpy as np  # noqa: F401  (the model imports it)
    from google.protobuf import json_format, text_format

    from dsv3ctl.adapters.model_repo import build_repo
    from dsv3ctl.core.spec import parse_spec
    from dsv3ctl.render import model_repo as R

    llm = importlib.import_module("llmapi_llm")
    sys.modules["tensorrt_llm"] = llm  # the LLM API double stands in for tensorrt_llm
    build_repo(parse_spec({"serving": {"mode": "llmapi"}}), tmp / "repo", mode="llmapi", model_path="/models/m")
    d = tmp / "repo" / R.LLMAPI_MODEL
    cfg = text_format.Parse((d / "config.pbtxt").read_text(), R._pb().ModelConfig())
    spec = importlib.util.spec_from_file_location("_llmapi_model", d / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    model.initialize({"model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
                      "model_repository": str(d), "model_version": "1", "model_name": R.LLMAPI_MODEL})
    return model, llm


def one_round(model, pb, n: int, streaming: bool) -> float:
    import numpy as np

    reqs = [pb.InferenceRequest(inputs=[pb.Tensor("text_input", np.array([f"p{i}".encode()], dtype=object)),
                                        pb.Tensor("streaming", np.array([streaming]))]) for i in range(n)]
    t0 = time.monotonic()
    for r in reqs:
        model.execute([r])
    for r in reqs:
        s = r.get_response_sender()
        if not s.wait(WAIT_S):
            raise SystemExit(f"a request did not finish within {WAIT_S:.0f} s")
        if any(x.has_error() for x in s.responses):
            raise SystemExit(f"request failed: {s.responses[-1].error().message()}")
    return max(r.get_response_sender().times[-1] for r in reqs) - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    pb = importlib.import_module("triton_python_backend_utils")
    with tempfile.TemporaryDirectory() as tmp:
        model, llm = load_model(Path(tmp))
        llm.CONFIG.update(tokens=a.tokens, token_delay_s=a.delay_ms / 1000.0)
        try:
            out = {}
            for streaming in (True, False):
                one = statistics.median(one_round(model, pb, 1, streaming) for _ in range(a.rounds))
                many = statistics.median(one_round(model, pb, a.concurrency, streaming) for _ in range(a.rounds))
                out["streaming" if streaming else "non-streaming"] = {
                    "one_s": round(one, 4), f"{a.concurrency}_s": round(many, 4), "ratio": round(many / one, 3)}
        finally:
            model.finalize()
    print(json.dumps({"tokens": a.tokens, "delay_ms": a.delay_ms, "concurrency": a.concurrency,
                      "rounds": a.rounds, **out}, indent=1))


if __name__ == "__main__":
    main()
