"""How closely the client's TTFT/ITL timestamps follow the server's (target: within 5 ms).

Runs the Triton protocol TEST DOUBLE (tests/doubles/triton_server.py) in this process with 100 ms before
the first token and 50 ms between tokens, streams ``--requests`` requests of 5 tokens at concurrency 2
through dsv3ctl's client (dsv3ctl.adapters.bench.run_point, what ``dsv3ctl bench`` uses), and compares, on
one ``perf_counter`` clock, when the client saw each token with when the double sent it. Prints, per
protocol, the largest first-token lag, the largest per-gap difference and the largest ITL difference (ms).
The result depends on the machine's load; tests only assert bounds that hold under any load
(tests/test_clients.py::test_measured_ttft_and_itl_follow_the_server_timeline).

    .venv/bin/python benchmarks/timing.py --requests 8 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target-ms", type=float, default=5.0)
    a = ap.parse_args()

    from dsv3ctl.adapters.bench import run_point, synthetic_prompts
    from dsv3ctl.adapters.tokenizer_files import load_tokenizer, resolve_tokenizer_dir
    from dsv3ctl.adapters.triton import Endpoint, GenClient
    from dsv3ctl.render.clients import GenParams, ModelKind
    from tests.doubles.triton_server import TritonDouble

    sys.setswitchinterval(0.0005)  # server and client threads share the GIL: hand it over quickly
    tok = load_tokenizer(resolve_tokenizer_dir(None))
    rows = []
    with TritonDouble() as server:
        server.behaviour.ttft_s, server.behaviour.itl_s = 0.100, 0.050
        for proto in ("grpc", "http"):
            u = server.grpc_url if proto == "grpc" else server.http_url
            lag = gap = itl_d = 0.0
            for k in range(a.rounds):
                prompts = synthetic_prompts(tok, a.requests, 12, 5, seed=7 + k)

                async def point(u=u, proto=proto, prompts=prompts):
                    async with GenClient(Endpoint(u, proto)) as c:
                        return await run_point(c, "ensemble", ModelKind.ensemble, prompts, GenParams(5),
                                               len(prompts), concurrency=2)

                for r in asyncio.run(point()):
                    tl = server.behaviour.timeline[r.prompt]
                    lag = max(lag, r.first - tl[1])
                    gaps = [y - x for x, y in zip(r.chunk_times, r.chunk_times[1:], strict=False)]
                    sgaps = [y - x for x, y in zip(tl[1:], tl[2:], strict=False)]
                    gap = max(gap, *(abs(g - s) for g, s in zip(gaps, sgaps, strict=True)))
                    itl = (r.end - r.first) / (len(r.chunk_times) - 1)
                    itl_d = max(itl_d, abs(itl - (tl[-1] - tl[1]) / (len(tl) - 2)))
            ms = lambda x: round(1000 * x, 2)  # noqa: E731
            rows.append({"protocol": proto, "requests": a.requests * a.rounds, "max_first_token_lag_ms": ms(lag),
                         "max_gap_diff_ms": ms(gap), "max_itl_diff_ms": ms(itl_d),
                         "within_target": max(lag, gap, itl_d) * 1000 <= a.target_ms})
    print(json.dumps({"target_ms": a.target_ms, "loadavg_1m": round(os.getloadavg()[0], 2), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
