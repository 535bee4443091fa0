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
    """Write the sbatch script (mode 0755, atomic). Exit 2 for an invalid spec."""
    from dsv3ctl.fsutil import atomic_write_text
    from dsv3ctl.render.slurm import render_sbatch

    text = render_sbatch(load(spec), image=image)
    if str(out) == "-":
        typer.echo(text, nl=False)
        return
    atomic_write_text(out, text, mode=0o755)
    typer.echo(f"wrote {out}", err=True)


def register(app: typer.Typer) -> None:
    slurm_app.command("render")(render)
    app.add_typer(slurm_app, name="slurm")
