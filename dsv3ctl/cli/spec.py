"""``dsv3ctl init`` and ``dsv3ctl spec show|schema``: write, show and describe the deployment spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsv3ctl.cli._common import OutputFormat, OutputOpt, Sink, SpecOpt, load

spec_app = typer.Typer(help="Show the effective spec or its JSON Schema.", no_args_is_help=True)


def init(
    path: Annotated[Path, typer.Argument(help="Where to write the starter spec.")] = Path("dsv3.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter spec (the embedded default: the FP8 example of TensorRT-LLM's DeepSeek-V3 README (examples/deepseek_v3/README.md on the deepseek branch))."""
    from dsv3ctl.core.spec import default_spec_text
    from dsv3ctl.errors import SpecError
    from dsv3ctl.fsutil import atomic_write_text

    if path.is_dir():
        raise SpecError(f"{path} is a directory; pass a file path, e.g. `dsv3ctl init {path / 'dsv3.yaml'}`")
    if path.exists() and not force:
        raise SpecError(f"{path} already exists; pass --force to overwrite it or choose another PATH")
    atomic_write_text(path, default_spec_text())
    Sink().info(f"wrote {path}; check it with `dsv3ctl plan --spec {path}`")


@spec_app.command("show")
def show(spec: SpecOpt = None, output: OutputOpt = OutputFormat.table) -> None:
    """Print the effective spec, every default filled (YAML, or JSON with --output json)."""
    s = load(spec)
    data = s.model_dump(mode="json")
    sink = Sink(output)

    def human(con) -> None:  # type: ignore[no-untyped-def]
        import yaml

        con.print(yaml.safe_dump(data, sort_keys=False).rstrip(), markup=False)

    sink.emit(data, human)


@spec_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of the spec."""
    from dsv3ctl.core.spec import spec_json_schema

    Sink(OutputFormat.json).emit(spec_json_schema())


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.add_typer(spec_app, name="spec")
