"""``dsv3ctl slurm render``: the sbatch script for the srun + container path (docs/launch.md, "Slurm")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsv3ctl.cli._common import OutputFormat, OutputOpt, Sink, SpecOpt, load

slurm_app = typer.Typer(name="slurm", help="Slurm: render the sbatch script.", no_args_is_help=True)


def render(
    spec: SpecOpt = None,
    out: Annotated[Path, typer.Option("--out", "-O", help="Where to write the script ('-' = stdout).")] = Path("-"),
    image: Annotated[str | None, typer.Option("--image", help="Container image (default: the spec's image); written in enroot's REGISTRY#IMAGE[:TAG] form.")] = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Write the sbatch script (mode 0755, atomic).

    With -o json: one document {script, image, nodes, ntasks, file} on stdout (the script text in "script"; "file" is the --out path or null).

    Exit 2 for an invalid spec or a layout the planner rejects (the checks `dsv3ctl plan` shows), or when --out is a directory or its directory does not exist.
    """
    import shlex

    from dsv3ctl.errors import SpecError
    from dsv3ctl.fsutil import atomic_write_text
    from dsv3ctl.render.slurm import render_sbatch

    to_file = str(out) != "-"
    if to_file:
        if out.is_dir():
            raise SpecError(f"--out {out}: is a directory; --out takes the script's file name",
                            hint=f"e.g. --out {out / 'dsv3.sbatch'}")
        parent = out.parent if str(out.parent) else Path(".")
        if parent.exists() and not parent.is_dir():
            raise SpecError(f"--out {out}: {parent} is not a directory", hint="choose another --out path")
    from dsv3ctl.render.image import image_ref
    from dsv3ctl.render.slurm import enroot_uri

    try:
        s = load(spec)
        text = render_sbatch(s, image=image)
    except SpecError as e:
        if spec is not None and e.hint and "`dsv3ctl plan`" in e.hint:
            e.hint = e.hint.replace("`dsv3ctl plan`", f"`dsv3ctl plan --spec {shlex.quote(str(spec))}`")
        raise
    if to_file:
        atomic_write_text(out, text, mode=0o755)
    sink = Sink(output)
    if sink.json:
        p = s.parallelism
        sink.emit({"script": text, "image": enroot_uri(image or image_ref(s, s.serving.mode)), "nodes": p.nodes,
                   "ntasks": p.world_size, "file": str(out) if to_file else None})
    elif to_file:
        typer.echo(f"wrote {out}", err=True)
    else:
        typer.echo(text, nl=False)


def register(app: typer.Typer) -> None:
    slurm_app.command("render")(render)
    app.add_typer(slurm_app, name="slurm")
