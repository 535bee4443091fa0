"""``dsv3ctl image build``: build (and push) the container image from docker/Dockerfile with the spec's pins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsv3ctl.cli._common import DryRunOpt, SpecOpt, load

image_app = typer.Typer(name="image", help="The container image (docker/Dockerfile).", no_args_is_help=True)


def _detect_builder() -> str | None:
    """docker when ``docker buildx version`` works, else podman, else buildah; None when none is usable."""
    import shutil
    import subprocess

    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=20).returncode == 0:
                return "docker"
        except (OSError, subprocess.SubprocessError):
            pass
    for b in ("podman", "buildah"):
        if shutil.which(b):
            return b
    return None


def _vcs_ref(context: Path) -> str:
    import subprocess

    try:
        r = subprocess.run(["git", "-C", str(context), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def build(
    spec: SpecOpt = None,
    target: Annotated[str | None, typer.Option("--target", help="llmapi | engine (default: serving.mode).")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Image tag (default image.tag or <version>-<target>).")] = None,
    push: Annotated[bool, typer.Option("--push", help="Push the image after building.")] = False,
    builder: Annotated[str | None, typer.Option("--builder", help="docker | podman | buildah (default image.builder: "
                                                                  "auto = docker buildx, else podman, else buildah).")] = None,
    context: Annotated[Path, typer.Option("--context", help="Build context: the dsv3ctl repository root.")] = Path("."),
    dry_run: DryRunOpt = False,
) -> None:
    """Build the image. ``--dry-run`` prints the exact command(s), one per line, and runs nothing.

    Exit 2 for a bad target/builder; 1 when no builder is installed (without --dry-run) or the build fails.
    """
    import shlex
    import subprocess
    import sys

    from dsv3ctl.errors import RuntimeFailure
    from dsv3ctl.render.image import build_commands

    s = load(spec)
    tgt = target or s.serving.mode
    chosen = builder or (None if s.image.builder == "auto" else s.image.builder)
    if chosen is None:
        chosen = _detect_builder()
        if chosen is None:
            if not dry_run:
                raise RuntimeFailure("no image builder found: install docker with the buildx plugin, podman or buildah")
            sys.stderr.write("note: no image builder found here; showing the docker buildx command\n")
            chosen = "docker"
    plan = build_commands(s, builder=chosen, target=tgt, tag=tag, push=push, context=str(context),
                          vcs_ref=_vcs_ref(context))
    if dry_run:
        for cmd in plan.commands:
            typer.echo(shlex.join(cmd))
        return
    for cmd in plan.commands:
        sys.stderr.write("+ " + shlex.join(cmd) + "\n")
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise RuntimeFailure(f"{cmd[0]} {cmd[1]} failed with exit code {rc}")
    typer.echo(plan.image)


def register(app: typer.Typer) -> None:
    image_app.command("build")(build)
    app.add_typer(image_app, name="image")
