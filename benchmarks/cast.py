"""Benchmark of `dsv3ctl weights cast-bf16` (not a test; figures go to benchmarks/RESULTS.md).

Writes a synthetic FP8 checkpoint of real DeepSeek-V3 shapes (routed-expert gate/up [2048, 7168] and
down [7168, 2048], a kv_a_proj_with_mqa [576, 7168] with its partial edge block, BF16 norms), then in
the same run measures, each phase in a fresh child process (peak RSS = that child's ru_maxrss):
- floor: read every input shard and write output-sized files (no compute), same worker count;
- cast: `cast_checkpoint` on the chosen device;
- kernel (cuda only): the dequant kernel on a GPU-resident [7168, 18432] weight vs a device copy
  (bytes read + written per second, CUDA events).
Reports FP8-input GB/s, cast/floor throughput ratio, per-core MB/s (cpu) and peak memory.

Usage: PYTHONPATH=. python benchmarks/cast.py --gb 1 --shards 4 --device cpu --workers 2 [--dir DIR]
       [--checksums on|off] [--repeat N] [--chunk-mib M]
cast_MBps_per_core = FP8 MB/s / os.cpu_count(); cast_MB_per_cpu_second = FP8 MB / (user + sys CPU s of the
cast child), which also counts a worker's background writer thread.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_input(d: Path, gb: float, shards: int) -> int:
    import numpy as np

    from dsv3ctl.core.checkpoint import encode_header

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_shard = gb * 1e9 / shards
    names = [f"model-{i + 1:05d}-of-{shards:06d}.safetensors" for i in range(shards)]
    wm: dict[str, str] = {}
    total = 0
    block = rng.integers(0, 256, 2048 * 7168, dtype=np.uint8)
    block[(block & 0x7F) == 0x7F] = 0
    for i, fn in enumerate(names):
        ents, blobs, size, e = [], [], 0, 0
        layer = 3 + i
        kv = f"model.layers.{layer}.self_attn.kv_a_proj_with_mqa.weight"
        ents += [(kv, "F8_E4M3", (576, 7168)), (kv + "_scale_inv", "F32", (5, 56))]
        blobs += [block[: 576 * 7168].tobytes(), (rng.random(5 * 56, dtype=np.float32) * 1e-3).tobytes()]
        size += 576 * 7168
        ln = f"model.layers.{layer}.input_layernorm.weight"
        ents.append((ln, "BF16", (7168,)))
        blobs.append(np.zeros(7168, np.uint16).tobytes())
        while size < per_shard:
            for p, shape in (("gate_proj", (2048, 7168)), ("up_proj", (2048, 7168)), ("down_proj", (7168, 2048))):
                n = f"model.layers.{layer}.mlp.experts.{e}.{p}.weight"
                sshape = (-(-shape[0] // 128), -(-shape[1] // 128))
                ents += [(n, "F8_E4M3", shape), (n + "_scale_inv", "F32", sshape)]
                blobs += [block.tobytes(), (rng.random(sshape[0] * sshape[1], dtype=np.float32) * 1e-3).tobytes()]
                size += shape[0] * shape[1]
            e += 1
        header, out = encode_header(ents, {"format": "pt"})
        with (d / fn).open("wb") as f:
            f.write(header)
            for b in blobs:
                f.write(b)
        for t in out:
            wm[t.name] = fn
        total += out[-1].end
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wm}))
    return total


def fp8_bytes(d: Path) -> tuple[int, int]:
    from dsv3ctl.core.checkpoint import load_index, read_header

    idx = load_index(d)
    fp8 = out = 0
    for sh in idx.shards:
        for t in read_header(d / sh).tensors.values():
            if t.dtype == "F8_E4M3":
                fp8 += t.nbytes
                out += 2 * t.nbytes
            elif not t.name.endswith("_scale_inv"):
                out += t.nbytes
    return fp8, out


def phase_floor(src: Path, dst: Path, workers: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    dst.mkdir(parents=True, exist_ok=True)
    chunk = 64 * 1024 * 1024
    files = sorted(src.glob("*.safetensors"))

    def one(p: Path) -> int:
        buf = bytearray(chunk)
        n = 0
        with p.open("rb") as f, (dst / p.name).open("wb") as g:
            while k := f.readinto(buf):
                n += k
                g.write(memoryview(buf)[:k])
                g.write(memoryview(buf)[:k])  # output is ~2x the FP8 input
            g.flush()
            os.fsync(g.fileno())
        return n

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        n = sum(ex.map(one, files))
    return {"seconds": time.perf_counter() - t, "bytes_in": n}


def phase_cast(src: Path, dst: Path, device: str, workers: int, checksums: bool, chunk_mib: float) -> dict:
    from dsv3ctl.adapters.cast import cast_checkpoint

    kw = {"chunk_bytes": int(chunk_mib * 2**20)} if chunk_mib else {}
    t = time.perf_counter()
    r = cast_checkpoint(src, dst, device=device, workers=workers, checksums=checksums, **kw)
    return {"seconds": time.perf_counter() - t, "device": r.device, "workers": r.workers}


def phase_kernel() -> dict:
    import torch

    from dsv3ctl.adapters.cast import TorchDequant

    m, n = 7168, 18432
    w = torch.randint(0, 126, (m, n), dtype=torch.uint8, device="cuda")
    s = torch.rand(-(-m // 128), -(-n // 128), device="cuda")
    dq = TorchDequant()
    big = torch.empty(m * n * 3 // 2, dtype=torch.int16, device="cuda")

    def timeit(fn, reps=20) -> float:
        fn()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1e3 / reps

    t_k = timeit(lambda: dq(w, s))
    t_c = timeit(lambda: big.clone())
    moved_k = m * n * 3  # 1 B read + 2 B written per element
    moved_c = big.numel() * 2 * 2
    return {"kernel": "triton" if dq.kernel is not None else "torch-ops", "kernel_GBps": moved_k / t_k / 1e9,
            "copy_GBps": moved_c / t_c / 1e9, "ratio": (moved_k / t_k) / (moved_c / t_c),
            "gpu": torch.cuda.get_device_name()}


def child(args: argparse.Namespace) -> None:
    src, work = Path(args.src), Path(args.work)
    if args.phase == "floor":
        out = phase_floor(src, work / "floor", args.workers)
    elif args.phase == "cast":
        out = phase_cast(src, work / "cast", args.device, args.workers, args.checksums == "on", args.chunk_mib)
    else:
        out = phase_kernel()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mib"] = ru.ru_maxrss / 1024
    out["cpu_user_s"], out["cpu_sys_s"] = ru.ru_utime, ru.ru_stime
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0, help="FP8 payload GB of the synthetic input")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--phase", default=None)
    ap.add_argument("--src", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--checksums", choices=["on", "off"], default=None,
                    help="sha256 while casting (the CLI default is on); default: off unless BENCH_CHECKSUMS=1")
    ap.add_argument("--chunk-mib", type=float, default=0, help="cast chunk_bytes in MiB (0 = the library default)")
    ap.add_argument("--repeat", type=int, default=1, help="run floor and cast N times; report medians")
    args = ap.parse_args()
    if args.checksums is None:
        args.checksums = "on" if os.environ.get("BENCH_CHECKSUMS") == "1" else "off"
    if args.phase:
        return child(args)
    base = Path(args.dir or tempfile.mkdtemp(prefix="dsv3-castbench-"))
    src = base / "src"
    if not (src / "model.safetensors.index.json").exists():
        make_input(src, args.gb, args.shards)
    fp8, out_bytes = fp8_bytes(src)
    largest = max(p.stat().st_size for p in src.glob("*.safetensors"))
    res: dict = {"fp8_input_bytes": fp8, "output_bytes": out_bytes, "largest_shard_bytes": largest,
                 "shards": args.shards, "workers": args.workers, "device": args.device, "cpus": os.cpu_count()}
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    phases = ["floor", "cast"] + (["kernel"] if args.device == "cuda" else [])
    res["checksums"] = args.checksums
    runs: dict[str, list] = {}
    for _ in range(max(1, args.repeat)):
        for ph in phases:
            shutil.rmtree(base / ph, ignore_errors=True)
            cp = subprocess.run([sys.executable, __file__, "--phase", ph, "--src", str(src), "--work", str(base),
                                 "--device", args.device, "--workers", str(args.workers),
                                 "--checksums", args.checksums, "--chunk-mib", str(args.chunk_mib)],
                                env=env, capture_output=True, text=True)
            if cp.returncode:
                print(cp.stderr[-3000:], file=sys.stderr)
                res[ph] = {"error": cp.stderr.strip().splitlines()[-1] if cp.stderr.strip() else "failed"}
                continue
            runs.setdefault(ph, []).append(json.loads(cp.stdout.strip().splitlines()[-1]))
            shutil.rmtree(base / ph, ignore_errors=True)
    for ph, rs in runs.items():
        if "seconds" in rs[0]:
            rs.sort(key=lambda r: r["seconds"])
            res[ph] = dict(rs[len(rs) // 2], all_seconds=[round(r["seconds"], 3) for r in rs])
        else:
            res[ph] = rs[len(rs) // 2]
    if "seconds" in res.get("floor", {}) and "seconds" in res.get("cast", {}):
        res["floor_fp8_GBps"] = fp8 / res["floor"]["seconds"] / 1e9
        res["cast_fp8_GBps"] = fp8 / res["cast"]["seconds"] / 1e9
        res["cast_over_floor"] = res["cast_fp8_GBps"] / res["floor_fp8_GBps"]
        res["cast_MBps_per_worker"] = res["cast_fp8_GBps"] * 1e3 / max(1, min(args.workers, os.cpu_count() or 1))
        res["cast_MBps_per_core"] = res["cast_fp8_GBps"] * 1e3 / (os.cpu_count() or 1)
        cpu_s = res["cast"]["cpu_user_s"] + res["cast"]["cpu_sys_s"]
        res["cast_MB_per_cpu_second"] = fp8 / cpu_s / 1e6
        res["peak_rss_limit_mib"] = (2 * largest + (1 << 30)) / 2**20
    res["loadavg_after"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
