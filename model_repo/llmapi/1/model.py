"""Triton Python model ``tensorrt_llm`` for llmapi mode (dsv3ctl's own): serves DeepSeek-V3 with
TensorRT-LLM's LLM API on the PyTorch backend, configured by ``model.yaml`` next to this file
(``LLM_CONFIG_PATH`` overrides the file name). Tensor names follow tensorrtllm_backend's llmapi model
(v0.19.0 ``all_models/llmapi/tensorrt_llm``): ``text_input``, ``streaming``, ``sampling_param_*`` ->
``text_output``, ``finish_reason``.

Launched under ``trtllm-llmapi-launch`` for multi-node worlds: the LLM object spawns/uses the MPI workers
itself. ``triton_config`` in model.yaml is read here and not passed to ``LLM``. Needs the image's
tensorrt_llm (>= 1.0); it cannot run without GPUs and is not exercised by dsv3ctl's tests.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

SAMPLING = {  # request tensor -> SamplingParams field
    "sampling_param_max_tokens": "max_tokens", "sampling_param_temperature": "temperature",
    "sampling_param_top_k": "top_k", "sampling_param_top_p": "top_p",
    "sampling_param_frequency_penalty": "frequency_penalty", "sampling_param_presence_penalty": "presence_penalty",
    "sampling_param_seed": "seed", "sampling_param_beam_width": "beam_width",
}


def _value(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy().reshape(-1)


class TritonPythonModel:
    def initialize(self, args):
        from tensorrt_llm import LLM

        self.model_config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.model_config)
        base = os.path.join(args["model_repository"], str(args["model_version"]))
        path = os.path.join(base, os.environ.get("LLM_CONFIG_PATH", "model.yaml"))
        with open(path, encoding="utf-8") as f:
            llm_args = yaml.safe_load(f) or {}
        llm_args.pop("triton_config", None)
        self.llm = LLM(**llm_args)

    def _params(self, request):
        from tensorrt_llm import SamplingParams

        kw = {}
        for name, field in SAMPLING.items():
            v = _value(request, name)
            if v is not None:
                kw[field] = v[0].item()
        stop = _value(request, "sampling_param_stop")
        if stop is not None:
            kw["stop"] = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in stop]
        excl = _value(request, "sampling_param_exclude_input_from_output")
        if excl is not None:
            kw["exclude_input_from_output"] = bool(excl[0])
        return SamplingParams(**kw)

    def _send(self, sender, text, reason, final=False):
        outs = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=object)),
                pb_utils.Tensor("finish_reason", np.array([(reason or "").encode("utf-8")], dtype=object))]
        sender.send(pb_utils.InferenceResponse(output_tensors=outs),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)

    def execute(self, requests):
        results = []
        for request in requests:
            sender = request.get_response_sender() if self.decoupled else None
            try:
                prompt = _value(request, "text_input")[0]
                prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
                stream = _value(request, "streaming")
                streaming = bool(stream is not None and stream[0])
                if streaming and not self.decoupled:
                    raise ValueError("streaming needs the decoupled transaction policy (serving.decoupled: true)")
                params = self._params(request)
                if streaming:
                    sent = 0
                    for out in self.llm.generate_async(prompt, params, streaming=True):
                        c = out.outputs[0]
                        self._send(sender, c.text[sent:], c.finish_reason)
                        sent = len(c.text)
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                c = self.llm.generate(prompt, params).outputs[0]
                if self.decoupled:
                    self._send(sender, c.text, c.finish_reason, final=True)
                else:
                    results.append(pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor("text_output", np.array([c.text.encode("utf-8")], dtype=object)),
                        pb_utils.Tensor("finish_reason", np.array([(c.finish_reason or "").encode()], dtype=object))]))
            except Exception as err:
                resp = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err)))
                if sender is not None:
                    sender.send(resp, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                else:
                    results.append(resp)
        return None if self.decoupled else results

    def finalize(self):
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.shutdown()
