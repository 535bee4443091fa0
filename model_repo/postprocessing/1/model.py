"""Triton Python model ``postprocessing`` (dsv3ctl's own, interface-compatible with tensorrtllm_backend's:
``TOKENS_BATCH:INT32[-1,-1]``, ``SEQUENCE_LENGTH:INT32[-1]`` -> ``OUTPUT:STRING[-1]``).

Each beam's first ``SEQUENCE_LENGTH`` tokens become the exact UTF-8 bytes they encode (special tokens
skipped unless the ``skip_special_tokens`` parameter is false). The ensemble calls this model once per
streamed response and keeps no state between calls, so a chunk may end inside a multi-byte character:
the bytes are passed through unchanged (never replaced), and a client that concatenates the chunks' bytes
gets exactly the non-streamed text. For chunks that always hold complete characters, stream through
``tensorrt_llm_bls``, which detokenizes incrementally.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from dsv3_text import DeepSeekText, model_parameter, parse_bool, tokenizer_dir_from


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        self.text = DeepSeekText(tokenizer_dir_from(args, self.model_config))
        self.skip_special = parse_bool(model_parameter(self.model_config, "skip_special_tokens"), True)

    def _one(self, request):
        tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
        if tokens.ndim == 2:  # [beam, len] without the batch dimension
            tokens = tokens[None]
            lengths = lengths.reshape(1, -1)
        out = []
        for b in range(tokens.shape[0]):
            row = []
            for beam in range(tokens.shape[1]):
                n = int(lengths[b][beam])
                row.append(self.text.ids_to_bytes(tokens[b][beam][:n].tolist(), self.skip_special))
            out.append(row)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", np.array(out, dtype=object))])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as err:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err))))
        return responses

    def finalize(self):
        pass
