"""Benchmark metrics for streamed LLM requests, with genai-perf's definitions.

Source: genai-perf (triton-inference-server/perf_analyzer, ``genai-perf/genai_perf/metrics`` and its
``LLMProfileDataParser``), per request:

- **time to first token (TTFT)**: first response carrying output minus request start (empty responses
  are ignored).
- **request latency (e2e)**: last response minus request start.
- **inter-token latency (ITL)**: ``(e2e - TTFT) / (output_tokens - 1)``, only for requests with more
  than one output token.
- **output tokens**: the output text tokenized with the model's tokenizer (no special tokens added).

and over the run (benchmark duration = last response of any request minus first request start):

- **output token throughput**: sum of output tokens / duration (tokens/s).
- **request throughput**: completed requests / duration (requests/s).

dsv3ctl adds **time per output token (TPOT)**: ``e2e / output_tokens`` per request — the whole request
time spread over its tokens, prefill included (ITL excludes the first token; TPOT does not).
Statistics per metric: mean, min, max, p50, p90, p99 (percentiles by linear interpolation, as numpy's
default). All times are reported in milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")


@dataclass
class RequestRecord:
    """One request: ``start`` / ``first`` / ``end`` are ``time.perf_counter()`` seconds (``first`` is
    ``None`` when no output arrived); ``text`` the whole output; ``error`` the server's text if it failed."""

    start: float
    input_tokens: int = 0
    first: float | None = None
    end: float | None = None
    responses: int = 0
    text: str = ""
    error: str | None = None
    output_tokens: int | None = None
    chunk_times: list[float] = field(default_factory=list)
    prompt: str = ""


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (``q`` in 0..100) of an ascending list; NaN when empty."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def stats(values: list[float]) -> dict[str, float | None]:
    """mean/min/max/p50/p90/p99 of ``values`` (None entries when empty)."""
    if not values:
        return {k: None for k in ("mean", "min", "max", "p50", "p90", "p99")}
    v = sorted(values)
    return {"mean": sum(v) / len(v), "min": v[0], "max": v[-1], "p50": percentile(v, 50),
            "p90": percentile(v, 90), "p99": percentile(v, 99)}


def per_request(r: RequestRecord) -> dict[str, float | None]:
    """TTFT, ITL, TPOT and e2e (ms) of one successful request (None where undefined)."""
    n = r.output_tokens if r.output_tokens is not None else r.responses
    out: dict[str, float | None] = {k: None for k in METRICS}
    if r.end is None:
        return out
    e2e = (r.end - r.start) * 1e3
    out["e2e_ms"] = e2e
    if r.first is not None:
        ttft = (r.first - r.start) * 1e3
        out["ttft_ms"] = ttft
        if n > 1:
            out["itl_ms"] = (e2e - ttft) / (n - 1)
    if n > 0:
        out["tpot_ms"] = e2e / n
    return out


def summarize(records: list[RequestRecord], label: dict[str, Any] | None = None) -> dict[str, Any]:
    """One benchmark point: counts, per-metric statistics and throughputs (see module docstring)."""
    ok = [r for r in records if r.error is None and r.end is not None]
    errors = [r.error for r in records if r.error is not None]
    rows = [per_request(r) for r in ok]
    if records:
        t0 = min(r.start for r in records)
        ends = [r.end for r in ok if r.end is not None]
        duration = (max(ends) - t0) if ends else 0.0
    else:
        duration = 0.0
    out_tokens = sum((r.output_tokens if r.output_tokens is not None else r.responses) for r in ok)
    in_tokens = [float(r.input_tokens) for r in ok]
    osl = [float(r.output_tokens if r.output_tokens is not None else r.responses) for r in ok]
    res: dict[str, Any] = dict(label or {})
    res.update({
        "requests": len(records),
        "completed": len(ok),
        "failed": len(errors),
        "errors": sorted(set(errors))[:10],
        "duration_s": duration,
        "output_tokens": out_tokens,
        "output_token_throughput_per_s": (out_tokens / duration) if duration > 0 else None,
        "request_throughput_per_s": (len(ok) / duration) if duration > 0 else None,
        "input_sequence_length": stats(in_tokens),
        "output_sequence_length": stats(osl),
    })
    for k in METRICS:
        res[k] = stats([row[k] for row in rows if row[k] is not None])  # type: ignore[misc]
    return res


CSV_COLUMNS = ["mode", "concurrency", "rate_per_s", "requests", "completed", "failed", "duration_s",
               "output_token_throughput_per_s", "request_throughput_per_s"] + [
    f"{m}_{s}" for m in METRICS for s in ("mean", "p50", "p90", "p99")]


def csv_rows(points: list[dict[str, Any]]) -> list[list[Any]]:
    """Flatten benchmark points into rows matching :data:`CSV_COLUMNS`."""
    rows = []
    for p in points:
        row = []
        for c in CSV_COLUMNS:
            m = next((m for m in METRICS if c.startswith(m + "_")), None)
            row.append(p.get(m, {}).get(c[len(m) + 1:]) if m else p.get(c))
        rows.append(row)
    return rows
