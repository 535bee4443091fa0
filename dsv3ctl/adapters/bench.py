"""Load generation for ``dsv3ctl bench``: prompts (synthetic of exact token length, or a JSONL dataset)
and the two load models, on top of :class:`dsv3ctl.adapters.triton.GenClient`.

- closed loop: ``concurrency`` workers, each sends its next request when its previous one finished;
- open loop: requests start at Poisson arrival times of mean ``rate`` per second, whatever is in flight.

Records are :class:`dsv3ctl.core.benchmetrics.RequestRecord` (times from ``time.perf_counter()``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv3ctl.core.benchmetrics import RequestRecord
from dsv3ctl.errors import Dsv3Error, SpecError
from dsv3ctl.render.clients import GenParams, ModelKind, build_generate_body, build_tensors, render_chat

_WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
          "government company number group problem fact river mountain ocean forest city garden library music "
          "science history letter window market engine signal network memory question answer history model "
          "light shadow stone paper silver golden quiet rapid ancient modern gentle bright distant simple").split()


@dataclass(frozen=True)
class Prompt:
    """Prompt text, its length in tokens (0 when unknown) and the max output tokens to ask for."""

    text: str
    input_tokens: int
    max_tokens: int


def synthetic_prompts(tokenizer: Any, n: int, input_tokens: int, output_tokens: int, seed: int = 0) -> list[Prompt]:
    """``n`` distinct prompts of exactly ``input_tokens`` tokens (re-encoding checked) with the given
    tokenizer (``tokenizers.Tokenizer``). Each starts with a random number so no two share a prefix."""
    if input_tokens < 1 or output_tokens < 1:
        raise SpecError("--input-tokens and --output-tokens must be >= 1")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [str(rng.randrange(10**6))] + [rng.choice(_WORDS) for _ in range(input_tokens + 8)]
        ids = tokenizer.encode(" ".join(words), add_special_tokens=False).ids[:input_tokens]
        text = tokenizer.decode(ids)
        for _ in range(8):  # decode/encode may not round-trip at the cut: trim until it does
            k = len(tokenizer.encode(text, add_special_tokens=False).ids)
            if k == input_tokens:
                break
            ids = ids[:len(ids) - max(1, k - input_tokens)] if k > input_tokens else ids + \
                tokenizer.encode(" " + rng.choice(_WORDS), add_special_tokens=False).ids[:input_tokens - k]
            text = tokenizer.decode(ids)
        out.append(Prompt(text, len(tokenizer.encode(text, add_special_tokens=False).ids), output_tokens))
    return out


def dataset_prompts(path: Path, output_tokens: int, tokenizer: Any = None,
                    tokenizer_config: dict[str, Any] | None = None) -> list[Prompt]:
    """Prompts from a JSONL file: one object per line with ``text`` (or ``prompt`` / ``text_input``) or
    ``messages`` (rendered with the chat template), and optional ``max_tokens`` / ``output_tokens``.
    Raises SpecError naming the bad line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SpecError(f"cannot read dataset {path}: {e}") from None
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise SpecError(f"{path}:{no}: not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise SpecError(f"{path}:{no}: expected a JSON object")
        text = obj.get("text", obj.get("prompt", obj.get("text_input")))
        if text is None and "messages" in obj:
            if tokenizer_config is None:
                raise SpecError(f"{path}:{no}: 'messages' need a chat template", hint="pass --tokenizer-dir")
            text = render_chat(obj["messages"], tokenizer_config)
        if not isinstance(text, str):
            raise SpecError(f"{path}:{no}: needs 'text', 'prompt', 'text_input' or 'messages'")
        mt_raw = next((v for v in (obj.get("max_tokens"), obj.get("output_tokens")) if v is not None), output_tokens)
        try:
            mt = int(mt_raw)
        except (TypeError, ValueError):
            raise SpecError(f"{path}:{no}: max_tokens/output_tokens must be an integer, not {mt_raw!r}") from None
        n_in = len(tokenizer.encode(text, add_special_tokens=False).ids) if tokenizer is not None else 0
        out.append(Prompt(text, n_in, mt))
    if not out:
        raise SpecError(f"dataset {path} has no prompts")
    return out


async def _one(client: Any, model: str, kind: ModelKind, p: Prompt, base: GenParams, rid: str) -> RequestRecord:
    from dataclasses import replace

    params = replace(base, max_tokens=p.max_tokens)
    tensors = build_tensors(kind, p.text, params, True) if client.ep.protocol == "grpc" else []
    body = build_generate_body(kind, p.text, params, True) if client.ep.protocol == "http" else {}
    rec = RequestRecord(start=time.perf_counter(), input_tokens=p.input_tokens, prompt=p.text)
    parts: list[str] = []
    try:
        async for ch in client.stream(model, tensors, body, True, request_id=rid):
            if ch.nbytes:
                rec.responses += 1
                rec.chunk_times.append(ch.t)
                if rec.first is None:
                    rec.first = ch.t
            parts.append(ch.text)
            rec.end = ch.t
        if rec.end is None:
            rec.end = time.perf_counter()
    except Dsv3Error as e:
        rec.error = e.message
        rec.end = None
    rec.text = "".join(parts)
    return rec


async def run_point(client: Any, model: str, kind: ModelKind, prompts: list[Prompt], base: GenParams,
                    num_requests: int, concurrency: int | None = None, rate: float | None = None,
                    seed: int = 0, on_done: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    """Run ``num_requests`` requests (prompts used round-robin) closed-loop at ``concurrency`` or
    open-loop at Poisson ``rate`` (requests/s); exactly one of the two must be given."""
    if (concurrency is None) == (rate is None):
        raise SpecError("give either a concurrency or a request rate")
    records: list[RequestRecord] = []

    def done(r: RequestRecord) -> None:
        records.append(r)
        if on_done:
            on_done(r)

    if concurrency is not None:
        if concurrency < 1:
            raise SpecError(f"--concurrency must be >= 1, got {concurrency}")
        nxt = iter(range(num_requests))

        async def worker() -> None:
            for i in nxt:
                done(await _one(client, model, kind, prompts[i % len(prompts)], base, f"c{concurrency}-{i}"))

        await asyncio.gather(*(worker() for _ in range(min(concurrency, num_requests))))
    else:
        assert rate is not None
        if rate <= 0:
            raise SpecError(f"--rate must be > 0 requests/s, got {rate}")
        rng = random.Random(seed)
        t0 = time.perf_counter()
        at = 0.0
        tasks = []

        async def later(i: int, when: float) -> None:
            await asyncio.sleep(max(0.0, t0 + when - time.perf_counter()))
            done(await _one(client, model, kind, prompts[i % len(prompts)], base, f"r{rate:g}-{i}"))

        for i in range(num_requests):
            tasks.append(asyncio.create_task(later(i, at)))
            at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    return records


def count_output_tokens(records: list[RequestRecord], tokenizer: Any) -> str:
    """Set ``output_tokens`` on each record: tokenizer count of its text (genai-perf's method), or the
    number of non-empty responses when no tokenizer is available. Returns the method used."""
    if tokenizer is None:
        for r in records:
            r.output_tokens = r.responses
        return "responses"
    encs = tokenizer.encode_batch([r.text for r in records], add_special_tokens=False)
    for r, e in zip(records, encs, strict=True):
        r.output_tokens = len(e.ids)
    return "tokenizer"
