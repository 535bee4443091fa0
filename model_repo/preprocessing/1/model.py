"""Triton Python model ``preprocessing`` (dsv3ctl's own, interface-compatible with tensorrtllm_backend's
inflight_batcher_llm preprocessing: same input/output names and dtypes for the text path).

Per request: ``QUERY`` text (or the dsv3ctl extension ``MESSAGES``, a JSON list of chat messages rendered
with the tokenizer's own chat template) -> ``INPUT_ID``/``REQUEST_INPUT_LEN``; ``STOP_WORDS_DICT`` and
``BAD_WORDS_DICT`` -> INT32 ``[2, L]`` word lists; ``EMBEDDING_BIAS_WORDS``/``WEIGHTS`` -> a vocab-sized
FP32 bias; ``END_ID``/``PAD_ID`` default to the tokenizer's (DeepSeek-V3: eos id 1, pad = eos).
Parameters: ``tokenizer_dir`` (relative to this version dir or absolute), ``add_special_tokens``
(default true), ``max_input_len`` (the engine's; longer prompts fail with a clear error).
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from dsv3_text import DeepSeekText, as_str, model_parameter, output_dtype, parse_bool, tokenizer_dir_from

OUTPUTS = ("INPUT_ID", "REQUEST_INPUT_LEN", "BAD_WORDS_IDS", "STOP_WORDS_IDS", "EMBEDDING_BIAS",
           "REQUEST_OUTPUT_LEN", "OUT_END_ID", "OUT_PAD_ID")


def _first(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        self.text = DeepSeekText(tokenizer_dir_from(args, self.model_config))
        self.add_special_tokens = parse_bool(model_parameter(self.model_config, "add_special_tokens"), True)
        mil = model_parameter(self.model_config, "max_input_len")
        self.max_input_len = int(mil) if mil else None
        self.dtypes = {n: output_dtype(pb_utils, self.model_config, n) for n in OUTPUTS}

    def _one(self, request):
        query = _first(request, "QUERY")
        messages = _first(request, "MESSAGES")
        out_len = _first(request, "REQUEST_OUTPUT_LEN")
        if out_len is None:
            raise ValueError("REQUEST_OUTPUT_LEN (max_tokens) is required")
        batch = (messages if messages is not None else query)
        if batch is None:
            raise ValueError("send QUERY (text_input) or MESSAGES (messages)")
        batch = batch.reshape(batch.shape[0], -1)
        ids_list = []
        for row in batch:
            raw = as_str(row[0])
            if messages is not None:
                ids = self.text.encode_chat(json.loads(raw))
            else:
                ids = self.text.encode(raw, add_special_tokens=self.add_special_tokens)
            if self.max_input_len is not None and len(ids) > self.max_input_len:
                raise ValueError(f"prompt has {len(ids)} tokens; the engine's max_input_len is {self.max_input_len}: "
                                 "shorten the prompt or rebuild the engine with a larger max_input_len")
            ids_list.append(ids)
        n = len(ids_list)
        width = max(len(i) for i in ids_list)
        pad = self.text.pad_id if self.text.pad_id is not None else self.text.eos_id
        input_ids = np.full((n, width), pad, dtype=self.dtypes["INPUT_ID"])
        for k, ids in enumerate(ids_list):
            input_ids[k, : len(ids)] = ids
        lengths = np.array([[len(i)] for i in ids_list], dtype=self.dtypes["REQUEST_INPUT_LEN"])

        def words(name):
            arr = _first(request, name)
            rows = [[] for _ in range(n)] if arr is None else [[as_str(w) for w in r] for r in arr.reshape(n, -1)]
            lists = [self.text.word_list(r) for r in rows]
            w = max(x.shape[1] for x in lists)
            out = np.zeros((n, 2, w), dtype=np.int32)
            out[:, 1, :] = -1
            for k, x in enumerate(lists):
                out[k, :, : x.shape[1]] = x
            return out

        bias_words = _first(request, "EMBEDDING_BIAS_WORDS")
        bias_weights = _first(request, "EMBEDDING_BIAS_WEIGHTS")
        if bias_words is None:
            bias = np.zeros((n, 0), dtype=self.dtypes["EMBEDDING_BIAS"])
        else:
            bias = np.zeros((n, self.text.vocab_size), dtype=self.dtypes["EMBEDDING_BIAS"])
            wts = bias_weights.reshape(n, -1) if bias_weights is not None else None
            for k, row in enumerate(bias_words.reshape(n, -1)):
                for j, word in enumerate(row):
                    ids = self.text.encode(as_str(word), add_special_tokens=False)
                    if ids:
                        bias[k, ids[0]] += float(wts[k, j]) if wts is not None else 0.0

        def scalar_or(name, default):
            arr = _first(request, name)
            if arr is None:
                return np.full((n, 1), default, dtype=self.dtypes["OUT_" + name])
            return arr.reshape(n, 1).astype(self.dtypes["OUT_" + name])

        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("INPUT_ID", input_ids),
            pb_utils.Tensor("REQUEST_INPUT_LEN", lengths),
            pb_utils.Tensor("BAD_WORDS_IDS", words("BAD_WORDS_DICT").astype(self.dtypes["BAD_WORDS_IDS"])),
            pb_utils.Tensor("STOP_WORDS_IDS", words("STOP_WORDS_DICT").astype(self.dtypes["STOP_WORDS_IDS"])),
            pb_utils.Tensor("EMBEDDING_BIAS", bias),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", out_len.reshape(n, -1).astype(self.dtypes["REQUEST_OUTPUT_LEN"])),
            pb_utils.Tensor("OUT_END_ID", scalar_or("END_ID", self.text.eos_id)),
            pb_utils.Tensor("OUT_PAD_ID", scalar_or("PAD_ID", pad)),
        ])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as err:  # one bad request must not fail the batch
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err))))
        return responses

    def finalize(self):
        pass
