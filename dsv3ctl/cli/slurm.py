"""``dsv3ctl slurm render``: the sbatch script for the srun + container path (docs/launch.md, "Slurm")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsv3ctl.cli._common import SpecOpt, load

slurm_app = typer.Typer(name="slurm", help="Slurm: render the sbatch script.", no_args_is_help=True)


def render(
    spec: SpecOpt = None,
    out: Annotated[Path, typer.Option("--out", "-O", help="Where to write the script ('-' = stdout).")] = Path("-"),
    image: Annotated[str | None, typer.Option("--image", help="Container image (default: the spec's image).")] = None,
) -> None:
    """Write the sbatch script (mode 0755, atomic).

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
    try:
        text = render_sbatch(load(spec), image=image)
    except SpecError as e:
        if spec is not None and e.hint and "`dsv3ctl plan`" in e.hint:
            e.hint = e.hint.replace("`dsv3ctl plan`", f"`dsv3ctl plan --spec {shlex.quote(str(spec))}`")
        raise
    if not to_file:
        typer.echo(text, nl=False)
        return
    atomic_write_text(out, text, mode=0o755)
    typer.echo(f"wrote {out}", err=True)


def register(app: typer.Typer) -> None:
    slurm_app.command("render")(render)
    app.add_typer(slurm_app, name="slurm")
