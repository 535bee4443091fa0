"""``dsv3ctl fabric-check``: the group fabric check on its own (dsv3ctl.adapters.fabric), without a model.

Two ways: ``--local N`` runs a world of N worker processes on this host (one per GPU with NCCL, gloo on CPUs), the
same worker and judge the launcher uses; ``--from-log FILE`` judges output captured elsewhere (the sbatch script's
``srun`` step, or any ``NCCL_DEBUG=INFO`` run of the worker). The launcher's own check runs inside
``dsv3ctl launch leader`` before the server.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dsv3ctl.cli._common import OutputFormat, OutputOpt, Sink, SpecOpt, load


def fabric_check(
    spec: SpecOpt = None,
    local: Annotated[int | None, typer.Option("--local", min=1, help="Run a local world of N processes on this host "
                                                                     "(default: one per visible GPU, else 2).")] = None,
    from_log: Annotated[Path | None, typer.Option("--from-log", help="Judge captured worker output instead ('-' = "
                                                                     "stdin).")] = None,
    world: Annotated[int | None, typer.Option("--world", min=1, help="--from-log: ranks in that run (default: "
                                                                     "parallelism.nodes x gpus_per_node).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="auto | nccl | gloo (auto: NCCL with GPUs).")] = "auto",
    mode: Annotated[str | None, typer.Option("--mode", help="warn | enforce (default: launch.fabric_check; auto and "
                                                            "off mean enforce here).")] = None,
    rdma: Annotated[bool | None, typer.Option("--rdma/--no-rdma", help="RDMA is expected (default "
                                                                       "deploy.rdma.enabled).")] = None,
    min_busbw_gbps: Annotated[float | None, typer.Option("--min-busbw-gbps", min=0, help="Threshold in Gb/s (default "
                                                         "launch.fabric_min_busbw_gbps; 0 there = derived).")] = None,
    runtime_dir: Annotated[Path, typer.Option("--runtime-dir", help="Where fabric-check.json/.log go.")] = Path("."),
    worker_path: Annotated[bool, typer.Option("--worker-path", help="Print the worker script's path and exit (for "
                                                                    "srun: python3 \"$(dsv3ctl fabric-check "
                                                                    "--worker-path)\" ...).")] = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """All-reduce over a world of ranks; read what NCCL chose and the bus bandwidth per size; judge it.

    Exit 0 for ok or warn, 1 when the verdict is fail, 2 for bad options. -o json prints the result document
    (also written to {runtime-dir}/fabric-check.json): status, problems [{code, message, fix}], sizes [{bytes,
    time_s, algbw_gbs, busbw_gbs}], nccl {nccl_version, ranks}.
    """
    from dsv3ctl.adapters import fabric as FC
    from dsv3ctl.adapters.launcher import count_gpus
    from dsv3ctl.errors import RuntimeFailure, SpecError

    if worker_path:
        typer.echo(FC.worker_path())
        return
    if backend not in ("auto", "nccl", "gloo"):
        raise SpecError(f"--backend={backend!r}: use auto, nccl or gloo")
    if mode not in (None, "warn", "enforce"):
        raise SpecError(f"--mode={mode!r}: use warn or enforce (off would check nothing)")
    if local is not None and from_log is not None:
        raise SpecError("--local and --from-log exclude each other; use one")
    s = load(spec)
    m = mode or s.launch.fabric_check
    if m in ("auto", "off"):
        m = "enforce"
    opts = FC.options_from_spec(s, mode=m, rdma=rdma, backend=backend)
    if min_busbw_gbps is not None:
        opts.min_busbw_gbps, opts.min_source = min_busbw_gbps, f"--min-busbw-gbps={min_busbw_gbps:g}"
    if from_log is not None:
        text = sys.stdin.read() if str(from_log) == "-" else _read(from_log)
        n = world or s.parallelism.world_size
        doc = FC.evaluate(text, world=n, opts=opts)
        FC.record(doc, text, runtime_dir)
    else:
        gpus = count_gpus()
        n = local or (gpus if gpus and backend != "gloo" else 2)
        opts.nodes = 1
        if min_busbw_gbps is None and not s.launch.fabric_min_busbw_gbps:
            opts.min_busbw_gbps, opts.min_source = 0.0, "none (one host)"
        try:
            doc = FC.check(run=lambda: FC.run_local(world=n, opts=opts), world=n, opts=opts, runtime_dir=runtime_dir,
                           log=lambda msg: typer.echo(msg, err=True) if output is OutputFormat.json else None)
        except RuntimeFailure:
            import json

            doc = json.loads((runtime_dir / FC.RESULT_FILE).read_text())

    result: dict = doc

    def human(con) -> None:  # type: ignore[no-untyped-def]
        for line in FC.describe(result):
            con.print(line, markup=False, highlight=False)

    Sink(output).emit(result, human)
    if result["status"] == "fail":
        raise typer.Exit(1)


def _read(p: Path) -> str:
    from dsv3ctl.errors import SpecError

    try:
        return p.read_text(errors="replace")
    except OSError as e:
        raise SpecError(f"--from-log {p}: {e.strerror or e}", hint="pass the file the worker's output went to") from None


def register(app: typer.Typer) -> None:
    app.command("fabric-check")(fabric_check)
