"""One rank of the fabric check: ``torch.distributed`` all-reduce over a few message sizes, run under mpirun (or srun,
or :func:`dsv3ctl.adapters.fabric.run_local`) with the environment the server ranks get. Stdlib + torch only, so it
also runs as a plain file: ``python3 fabric_worker.py --master-addr HOST ...``.

Rank and world size come from OpenMPI (``OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK``), Slurm (``SLURM_PROCID/NTASKS/
LOCALID``) or ``RANK/WORLD_SIZE/LOCAL_RANK``. Backend ``auto``: NCCL when CUDA is available (one GPU per local rank,
``NCCL_DEBUG=INFO`` so NCCL prints its transport lines to stdout; the launcher parses them), else gloo on CPU.
Each rank prints one line ``DSV3CTL-FABRIC-RESULT <json>``: ``{rank, world, host, backend, torch, nccl,
sizes: [[bytes, seconds per all-reduce], ...], error}``. Every tensor is filled with ``rank + 1`` and the sum is
checked once per size (``n (n + 1) / 2``), so a wrong result is an error, not a bandwidth.
Exit 0 when the rank finished, 1 when it failed (the error is in its result line).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import traceback
from datetime import timedelta

MARKER = "DSV3CTL-FABRIC-RESULT "
#: Message sizes (bytes): NCCL 1 MiB .. 1 GiB (the largest is the one judged); gloo over TCP on CPUs stays small.
NCCL_SIZES = (2**20, 2**24, 2**28, 2**30)
GLOO_SIZES = (2**16, 2**20, 2**22)


def _env_int(names: tuple[str, ...], default: int | None = None) -> int:
    for n in names:
        v = os.environ.get(n, "")
        if v.isdigit():
            return int(v)
    if default is None:
        raise SystemExit(f"fabric worker: none of {', '.join(names)} is set; run it under mpirun or srun")
    return default


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--master-addr", required=True, help="host of rank 0 (the leader), for the TCP rendezvous")
    ap.add_argument("--master-port", type=int, default=29511)
    ap.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    ap.add_argument("--sizes", default="", help="message sizes in bytes, comma-separated (default: NCCL_SIZES for "
                                                "nccl, GLOO_SIZES for gloo)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=300.0, help="rendezvous and collective timeout")
    a = ap.parse_args(argv)
    rank = _env_int(("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "RANK"))
    world = _env_int(("OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "WORLD_SIZE"))
    local = _env_int(("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"), 0)
    rec: dict = {"rank": rank, "world": world, "host": socket.gethostname(), "backend": a.backend, "torch": None,
                 "nccl": None, "sizes": [], "error": None}
    try:
        import torch
        import torch.distributed as dist

        rec["torch"] = torch.__version__
        backend = a.backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        rec["backend"] = backend
        kw: dict = {}
        if backend == "nccl":
            os.environ["NCCL_DEBUG"] = "INFO"  # the check reads NCCL's INFO lines; read by NCCL at its init
            os.environ.setdefault("NCCL_DEBUG_SUBSYS", "INIT,NET")
            torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
            dev = torch.device("cuda", torch.cuda.current_device())
            kw["device_id"] = dev  # eager communicator init: the transport lines appear before the first size
            v = torch.cuda.nccl.version()
            rec["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        else:
            dev = torch.device("cpu")
        dist.init_process_group(backend, init_method=f"tcp://{a.master_addr}:{a.master_port}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=a.timeout_s), **kw)
        expect = world * (world + 1) / 2
        sizes = [int(s) for s in a.sizes.split(",") if s.strip()] or (NCCL_SIZES if backend == "nccl" else GLOO_SIZES)
        for size in sizes:
            n = max(1, size // 4)
            x = torch.full((n,), float(rank + 1), dtype=torch.float32, device=dev)
            dist.all_reduce(x)
            got = float(x[0].item()) if n else expect
            if abs(got - expect) > 1e-3 * expect:
                raise RuntimeError(f"all-reduce of {size} B returned {got}, expected {expect}")
            for _ in range(a.warmup):
                dist.all_reduce(x)
            if backend == "nccl":
                torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(a.iters):
                dist.all_reduce(x)
            if backend == "nccl":
                torch.cuda.synchronize()
            rec["sizes"].append([n * 4, (time.perf_counter() - t0) / a.iters])
            del x
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - every failure becomes this rank's result line
        rec["error"] = f"{type(e).__name__}: {e}"
        sys.stderr.write(traceback.format_exc())
    sys.stdout.flush()
    sys.stdout.write(MARKER + json.dumps(rec) + "\n")
    sys.stdout.flush()
    return 1 if rec["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
