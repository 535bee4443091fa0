#!/opt/dsv3ctl/venv/bin/python3
"""TEST DOUBLE of ``tritonserver`` in Triton leader mode: no model, no GPU, canned text.

The test image (docker/Dockerfile target ``test``) installs this file as ``/usr/local/bin/tritonserver``;
the serving targets never contain it. It stands in for the real server under the launcher's mpirun:

- Its flags are parsed with :func:`dsv3ctl.core.contracts.argparser` over
  ``dsv3ctl/data/contracts/tritonserver.json`` (what triton-inference-server/server's
  ``command_line_parser.cc`` accepts), so it rejects every flag and value the real tritonserver rejects.
- One process per MPI rank (mpirun starts it once per rank, as leader mode does). The rank and the world size
  come from ``OMPI_COMM_WORLD_RANK`` / ``OMPI_COMM_WORLD_SIZE`` (unset: a world of one).
- Every rank > 0 checks in with rank 0 over TCP (port ``DSV3CTL_STANDIN_PORT``, default 8010) and keeps the
  connection open. Rank 0's address: ``DSV3CTL_STANDIN_LEADER`` when set, else the TCP addresses of mpirun
  itself from ``OMPI_MCA_orte_hnp_uri`` (ORTE's launcher sets it in every rank's environment: open-mpi/ompi
  @ b217c8ce ``orte/mca/odls/base/odls_base_default_fns.c``, ``opal_setenv("OMPI_MCA_orte_hnp_uri", ...)``
  after "pass the hnp's contact info to the local proc"; seen as ``<jobid>;tcp://<ip>,...:<port>`` under
  Debian 12's OpenMPI 4.1); the launcher runs mpirun on the leader and maps rank 0 to the leader's first slot.
- Rank 0 serves Triton's HTTP and gRPC endpoints with the protocol double :mod:`triton_server` (health,
  metadata, ``generate``/``generate_stream``, gRPC infer) on ``--http-port``/``--grpc-port`` and reports
  ready only once every rank of the world has checked in. Every reply says it comes from a test double:
  server name ``triton-test-double`` (``/v2`` and the HTTP ``Server`` header) and canned words
  ("... the server test double, not a real model ...").
- When a rank is lost (its connection closes) rank 0 exits 1, and a rank whose rank 0 is gone exits 1: as a
  real leader-mode world ends when one of its ranks dies, and mpirun then ends the others.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

CHECKIN_PORT = int(os.environ.get("DSV3CTL_STANDIN_PORT", "8010"))
WAIT_S = float(os.environ.get("DSV3CTL_STANDIN_WAIT_S", "120"))


def log(rank: int, msg: str) -> None:
    sys.stderr.write(f"tritonserver TEST DOUBLE rank {rank}: {msg}\n")
    sys.stderr.flush()


def leader_addresses(env: dict[str, str]) -> list[str]:
    """Where rank 0 listens: ``DSV3CTL_STANDIN_LEADER`` (host or comma list), else the IPv4 addresses in
    ``OMPI_MCA_orte_hnp_uri`` (``<jobid>;tcp://a,b:port;tcp6://...``), else 127.0.0.1."""
    if env.get("DSV3CTL_STANDIN_LEADER"):
        return [h.strip() for h in env["DSV3CTL_STANDIN_LEADER"].split(",") if h.strip()]
    m = re.search(r"tcp://([0-9.,]+):\d+", env.get("OMPI_MCA_orte_hnp_uri", ""))
    return m.group(1).split(",") if m else ["127.0.0.1"]


def world(env: dict[str, str]) -> tuple[int, int]:
    return int(env.get("OMPI_COMM_WORLD_RANK", "0")), int(env.get("OMPI_COMM_WORLD_SIZE", "1"))


def serve_rank0(opts, size: int) -> None:  # type: ignore[no-untyped-def]
    from triton_server import Behaviour, TritonDouble

    behaviour = Behaviour(ready=False)
    checked: dict[int, socket.socket] = {}
    lock = threading.Lock()

    def watch(r: int, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(64)
            except OSError:
                data = b""
            if not data:
                log(0, f"rank {r} is lost (its connection closed): the world ends, exiting 1")
                os._exit(1)

    def accept(srv: socket.socket) -> None:
        while True:
            conn, peer = srv.accept()
            line = conn.makefile("r").readline().split()
            if len(line) != 4 or line[0] != "rank" or line[2] != "world" or int(line[3]) != size:
                log(0, f"bad check-in {line} from {peer[0]} (this world has {size} ranks); closing it")
                conn.close()
                continue
            r = int(line[1])
            with lock:
                checked[r] = conn
                n = len(checked)
            log(0, f"rank {r} checked in from {peer[0]} ({n + 1}/{size})")
            threading.Thread(target=watch, args=(r, conn), daemon=True).start()
            if n == size - 1:
                behaviour.ready = True
                log(0, f"all {size} ranks checked in: ready")

    if size > 1:
        srv = socket.create_server(("0.0.0.0", CHECKIN_PORT), reuse_port=False)
        threading.Thread(target=accept, args=(srv,), daemon=True).start()
    else:
        behaviour.ready = True
    host = opts.opt_http_address or "0.0.0.0"
    d = TritonDouble(grpc_port=opts.opt_grpc_port or 8001, http_port=opts.opt_http_port or 8000,
                     behaviour=behaviour, host=host).start()
    log(0, f"serving HTTP {host}:{d.http_port} gRPC {host}:{d.grpc_port} (canned text, no model); "
           f"waiting for {size - 1} rank(s) on port {CHECKIN_PORT}")
    deadline = time.monotonic() + WAIT_S
    while not behaviour.ready:
        if time.monotonic() > deadline:
            with lock:
                missing = sorted(set(range(1, size)) - set(checked))
            log(0, f"ranks {missing} did not check in within {WAIT_S:.0f} s (DSV3CTL_STANDIN_WAIT_S); exiting 1")
            os._exit(1)
        time.sleep(0.1)
    threading.Event().wait()


def serve_rank(rank: int, size: int) -> None:
    addrs = leader_addresses(dict(os.environ))
    deadline = time.monotonic() + WAIT_S
    while True:
        for a in addrs:
            try:
                s = socket.create_connection((a, CHECKIN_PORT), timeout=2)
            except OSError:
                continue
            s.settimeout(None)
            s.sendall(f"rank {rank} world {size}\n".encode())
            log(rank, f"checked in with rank 0 at {a}:{CHECKIN_PORT}")
            while s.recv(64):
                pass
            log(rank, "rank 0 is gone: the world ends, exiting 1")
            os._exit(1)
        if time.monotonic() > deadline:
            log(rank, f"no rank 0 at {','.join(addrs)}:{CHECKIN_PORT} within {WAIT_S:.0f} s; exiting 1")
            os._exit(1)
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    from dsv3ctl.core.contracts import argparser

    opts = argparser("tritonserver", prog="tritonserver").parse_args(argv)
    rank, size = world(dict(os.environ))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    log(rank, f"world of {size}, argv {' '.join(sys.argv[1:])}")
    if rank == 0:
        serve_rank0(opts, size)
    else:
        serve_rank(rank, size)


if __name__ == "__main__":
    main()
