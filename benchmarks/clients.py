"""Client overhead per streamed token at 200 concurrent streams.

Starts the Triton protocol TEST DOUBLE (tests/doubles/triton_server.py) in a separate process with zero
injected delay, then drives ``--streams`` concurrent streams of ``--tokens`` responses each through
dsv3ctl's client (dsv3ctl.adapters.bench.run_point, the code ``dsv3ctl bench`` uses) and reports the
client process's CPU time per streamed token (``time.process_time``: user+sys of this process only, so
the server's work on the same cores is excluded) and the wall time per token. Target: <= 1 ms CPU/token.

    .venv/bin/python benchmarks/clients.py --streams 200 --tokens 100 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--protocol", choices=["grpc", "http", "both"], default="both")
    a = ap.parse_args()
    from dsv3ctl.adapters.bench import Prompt, run_point
    from dsv3ctl.adapters.triton import Endpoint, GenClient
    from dsv3ctl.render.clients import GenParams, ModelKind

    proc = subprocess.Popen([sys.executable, "-m", "tests.doubles.triton_server", "--grpc-port", "0",
                             "--http-port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        m = re.search(r"gRPC (\S+)\s+HTTP (\S+)", proc.stdout.readline())
        assert m
        urls = {"grpc": m.group(1), "http": m.group(2)}
        out = []
        for proto in (["grpc", "http"] if a.protocol == "both" else [a.protocol]):
            prompts = [Prompt(f"TAG=s{i}", 0, a.tokens) for i in range(a.streams)]

            async def run(proto: str = proto, prompts: list = prompts) -> tuple[float, float, int, int]:
                async with GenClient(Endpoint(urls[proto], proto), max_streams=a.streams * 2) as c:
                    # warm-up round (connections, imports)
                    await run_point(c, "ensemble", ModelKind.ensemble, prompts, GenParams(a.tokens), a.streams,
                                    concurrency=a.streams)
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    toks = fails = 0
                    for _ in range(a.rounds):
                        recs = await run_point(c, "ensemble", ModelKind.ensemble, prompts, GenParams(a.tokens),
                                               a.streams, concurrency=a.streams)
                        toks += sum(r.responses for r in recs)
                        fails += sum(r.error is not None for r in recs)
                    return time.process_time() - cpu0, time.perf_counter() - wall0, toks, fails

            cpu, wall, toks, fails = asyncio.run(run())
            row = {"protocol": proto, "streams": a.streams, "tokens_per_stream": a.tokens, "rounds": a.rounds,
                   "tokens": toks, "failed": fails, "client_cpu_ms_per_token": cpu / toks * 1e3,
                   "wall_ms_per_token": wall / toks * 1e3, "tokens_per_s": toks / wall}
            out.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
