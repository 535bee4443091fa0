"""Triton Python model ``tensorrt_llm_bls`` (dsv3ctl's own, interface-compatible with tensorrtllm_backend's
BLS: the same client-facing tensor names and dtypes as the ``ensemble``).

It calls ``preprocessing`` and then ``tensorrt_llm`` through Triton's business-logic-scripting API and
detokenizes itself. With ``stream=true`` (needs the decoupled transaction policy) every response from
``tensorrt_llm`` is turned into text incrementally: only complete UTF-8 characters are sent, nothing is
added or stripped, so the concatenation of the streamed ``text_output`` chunks equals the non-streamed
text. Special tokens are skipped unless the ``skip_special_tokens`` parameter is false.
Parameters: ``tokenizer_dir``, ``skip_special_tokens``, ``tensorrt_llm_model_name`` (default
``tensorrt_llm``), ``preprocessing_model_name`` (default ``preprocessing``).
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from dsv3_text import DeepSeekText, model_parameter, parse_bool, tokenizer_dir_from

# client tensor -> preprocessing input
PRE_INPUTS = {
    "text_input": "QUERY", "messages": "MESSAGES", "max_tokens": "REQUEST_OUTPUT_LEN",
    "bad_words": "BAD_WORDS_DICT", "stop_words": "STOP_WORDS_DICT",
    "embedding_bias_words": "EMBEDDING_BIAS_WORDS", "embedding_bias_weights": "EMBEDDING_BIAS_WEIGHTS",
    "end_id": "END_ID", "pad_id": "PAD_ID",
}
# preprocessing output -> tensorrt_llm input
PRE_TO_LLM = {
    "INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths", "REQUEST_OUTPUT_LEN": "request_output_len",
    "BAD_WORDS_IDS": "bad_words_list", "STOP_WORDS_IDS": "stop_words_list", "EMBEDDING_BIAS": "embedding_bias",
    "OUT_END_ID": "end_id", "OUT_PAD_ID": "pad_id",
}
# client tensor -> tensorrt_llm input (passed through unchanged)
CLIENT_TO_LLM = {
    "beam_width": "beam_width", "temperature": "temperature", "top_k": "runtime_top_k", "top_p": "runtime_top_p",
    "length_penalty": "len_penalty", "repetition_penalty": "repetition_penalty", "min_length": "min_length",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty", "random_seed": "random_seed",
    "return_log_probs": "return_log_probs", "return_context_logits": "return_context_logits",
    "return_generation_logits": "return_generation_logits", "exclude_input_in_output": "exclude_input_in_output",
    "stream": "streaming", "num_return_sequences": "num_return_sequences",
}
# tensorrt_llm output -> client output (besides text_output)
LLM_OUTPUTS = {
    "cum_log_probs": "cum_log_probs", "output_log_probs": "output_log_probs", "context_logits": "context_logits",
    "generation_logits": "generation_logits", "batch_index": "batch_index", "sequence_index": "sequence_index",
}


class _RequestError(Exception):
    pass


def _check(response):
    if response.has_error():
        raise _RequestError(response.error().message())
    return response


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.model_config)
        self.text = DeepSeekText(tokenizer_dir_from(args, self.model_config))
        self.skip_special = parse_bool(model_parameter(self.model_config, "skip_special_tokens"), True)
        self.llm_name = model_parameter(self.model_config, "tensorrt_llm_model_name", "tensorrt_llm")
        self.pre_name = model_parameter(self.model_config, "preprocessing_model_name", "preprocessing")
        self.declared_outputs = {o["name"] for o in self.model_config.get("output", [])}

    # ------------------------------------------------------------------ steps
    def _preprocess(self, request):
        inputs = []
        for client, name in PRE_INPUTS.items():
            t = pb_utils.get_input_tensor_by_name(request, client)
            if t is not None:
                inputs.append(pb_utils.Tensor(name, t.as_numpy()))
        resp = _check(pb_utils.InferenceRequest(
            model_name=self.pre_name, inputs=inputs, requested_output_names=list(PRE_TO_LLM)).exec())
        return {name: pb_utils.get_output_tensor_by_name(resp, name).as_numpy() for name in PRE_TO_LLM}

    def _llm_request(self, request, pre):
        inputs = []
        for name, llm in PRE_TO_LLM.items():
            arr = pre[name]
            if name == "EMBEDDING_BIAS" and arr.size == 0:
                continue
            inputs.append(pb_utils.Tensor(llm, arr))
        for client, llm in CLIENT_TO_LLM.items():
            t = pb_utils.get_input_tensor_by_name(request, client)
            if t is not None:
                inputs.append(pb_utils.Tensor(llm, t.as_numpy()))
        wanted = ["output_ids", "sequence_length"] + [k for k, v in LLM_OUTPUTS.items() if v in self.declared_outputs]
        return pb_utils.InferenceRequest(model_name=self.llm_name, inputs=inputs, requested_output_names=wanted)

    @staticmethod
    def _tokens(resp):
        ids = pb_utils.get_output_tensor_by_name(resp, "output_ids").as_numpy()
        lens = pb_utils.get_output_tensor_by_name(resp, "sequence_length").as_numpy()
        ids = ids.reshape(-1, ids.shape[-1]) if ids.ndim >= 2 else ids.reshape(1, -1)
        lens = lens.reshape(-1)
        return [ids[b][: int(lens[b])].tolist() for b in range(ids.shape[0])]

    def _response(self, resp, texts):
        outs = [pb_utils.Tensor("text_output", np.array([texts], dtype=object))]
        for llm, client in (LLM_OUTPUTS.items() if resp is not None else ()):
            if client not in self.declared_outputs:
                continue
            t = pb_utils.get_output_tensor_by_name(resp, llm)
            if t is not None:
                outs.append(pb_utils.Tensor(client, t.as_numpy()))
        return pb_utils.InferenceResponse(output_tensors=outs)

    def _generate(self, request, send):
        stream_t = pb_utils.get_input_tensor_by_name(request, "stream")
        streaming = bool(stream_t is not None and stream_t.as_numpy().reshape(-1)[0])
        if streaming and not self.decoupled:
            raise _RequestError("stream=true needs the decoupled transaction policy on tensorrt_llm_bls "
                                "(dsv3ctl: serving.decoupled: true)")
        pre = self._preprocess(request)
        llm_req = self._llm_request(request, pre)
        responses = llm_req.exec(decoupled=self.decoupled)
        if not self.decoupled:
            responses = [responses]
        if streaming:
            decoder = None
            last = None
            for resp in responses:
                if resp is None:
                    continue
                _check(resp)
                if not pb_utils.get_output_tensor_by_name(resp, "output_ids"):
                    continue  # final empty response of a decoupled stream
                beams = self._tokens(resp)
                if len(beams) != 1:
                    raise _RequestError("streaming supports beam_width 1 only; send stream=false for beam search")
                decoder = decoder or self.text.stream(self.skip_special)
                send(self._response(resp, [decoder.feed(beams[0]).encode("utf-8")]))
                last = resp
            if decoder is not None:
                tail = decoder.flush()
                if tail:
                    send(self._response(None, [tail.encode("utf-8")]))
            return
        final = None
        for resp in responses:
            if resp is None:
                continue
            _check(resp)
            if pb_utils.get_output_tensor_by_name(resp, "output_ids"):
                final = resp
        if final is None:
            raise _RequestError(f"{self.llm_name} returned no output_ids")
        texts = [self.text.ids_to_bytes(b, self.skip_special) for b in self._tokens(final)]
        send(self._response(final, texts))

    def execute(self, requests):
        results = []
        for request in requests:
            if self.decoupled:
                sender = request.get_response_sender()
                try:
                    self._generate(request, sender.send)
                except Exception as err:
                    sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err))))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                box = []
                try:
                    self._generate(request, box.append)
                    results.append(box[-1])
                except Exception as err:
                    results.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err))))
        return None if self.decoupled else results

    def finalize(self):
        pass
