"""``dsv3ctl weights download|verify|cast-bf16|synth``: the Hugging Face checkpoint pipeline."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dsv3ctl.cli._common import DryRunOpt, OutputFormat, OutputOpt, Sink, SpecOpt, load

if TYPE_CHECKING:
    from rich.console import Console

group = typer.Typer(help="DeepSeek-V3 checkpoints: download (from the hub), verify (offline), cast-bf16 (FP8 to BF16), "
                          "synth (a small synthetic checkpoint for demos and tests).", no_args_is_help=True)


def _report_human(rep_json: dict[str, Any]) -> Callable[[Console], None]:
    def human(con: Console) -> None:
        mark = "[green]ok[/]" if rep_json["ok"] else "[red]FAIL[/]"
        con.print(f"{mark} {rep_json['path']}: {rep_json['precision']} checkpoint, {rep_json['found_tensors']:,} of "
                  f"{rep_json['expected_tensors']:,} expected tensors in {rep_json['shards']} shards, "
                  f"{rep_json['bytes']:,} payload bytes")
        for key in ("missing", "extra", "malformed", "index_problems", "shard_problems", "checksum_problems"):
            items = rep_json[key]
            if items:
                con.print(f"  [red]{key}[/] ({len(items)}):")
                for it in items[:50]:
                    con.print(f"    {it}", markup=False)
                if len(items) > 50:
                    con.print(f"    ... and {len(items) - 50} more (use -o json for all)")
        for w in rep_json["warnings"]:
            con.print(f"  [yellow]warn[/] {w}")
        if rep_json["checksums_checked"]:
            con.print(f"  sha256 checked for {rep_json['checksums_checked']} files")

    return human


def verify(
    directory: Annotated[Path, typer.Argument(help="Checkpoint directory (config.json, index, shards).")],
    checksums: Annotated[bool, typer.Option("--checksums", help="Also sha256 every file listed in .dsv3ctl/checksums.json.")] = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Check a checkpoint offline: index vs shard headers, complete shards, every predicted tensor with its
    dtype and shape and nothing else. Exit 0 when sound, 1 when anything is missing/extra/malformed."""
    from dsv3ctl.core.checkpoint import verify_checkpoint

    sink = Sink(output)
    prog, cb = _hash_progress(sink, "sha256")
    with prog:
        rep = verify_checkpoint(directory, checksums=checksums, progress=cb).to_json()
    sink.emit(rep, _report_human(rep))
    if not rep["ok"]:
        raise typer.Exit(1)


def cast_bf16(
    src: Annotated[Path, typer.Argument(help="FP8 checkpoint directory.")],
    dst: Annotated[Path, typer.Argument(help="Output BF16 checkpoint directory (created; rerun to resume).")],
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda (cuda needs torch).")] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=0, help="Shards cast in parallel; 0 = auto.")] = 0,
    checksums: Annotated[bool, typer.Option("--checksums/--no-checksums", help="sha256 each output shard while writing.")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 2 when SRC is already BF16 (default: nothing to do, exit 0).")] = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Cast FP8 block-quantized weights to BF16 (exact: bf16(float32(W) x block scale), RNE), streaming,
    resumable (kill -9 safe), and verify the result. SRC is checked first (config.json, every tensor, recorded
    checksums, FP8) and the GPU's capability too; nothing is written when a check fails."""
    from dsv3ctl.adapters.cast import cast_checkpoint
    from dsv3ctl.core.checkpoint import verify_checkpoint

    sink = Sink(output)
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=sink.err, transient=True, disable=sink.json) as prog:
        task = prog.add_task("casting", total=None)
        htask = prog.add_task("sha256 of SRC", total=None, visible=False)

        def progress(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        def hashing(done: int, total: int) -> None:
            prog.update(htask, completed=done, total=total, visible=done < total)

        res = cast_checkpoint(src, dst, device=device, workers=workers, checksums=checksums, progress=progress,
                              log=sink.info, strict=strict, hash_progress=hashing)
    if res.noop:
        sink.emit(res.to_json(), lambda con: None)
        return
    rep = verify_checkpoint(dst)
    data = {**res.to_json(), "verify": rep.to_json()}

    def human(con: Console) -> None:
        con.print(f"cast {res.shards_done} shards ({res.shards_skipped} already done) on {res.device} with "
                  f"{res.workers} workers in {res.seconds:.1f}s -> {res.dst}")
        _report_human(rep.to_json())(con)

    sink.emit(data, human)
    if not rep.ok:
        raise typer.Exit(1)


def synth(
    out: Annotated[Path, typer.Argument(help="Directory to write the synthetic FP8 checkpoint into.")],
    shards: Annotated[int, typer.Option("--shards", min=1, max=64, help="Number of shard files.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 0,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Write a small SYNTHETIC FP8 checkpoint with DeepSeek-V3's real tensor names and format (scaled-down
    dimensions, random values, partial edge blocks, cross-shard scales) for demos and tests."""
    from dsv3ctl.adapters.synth import write_synthetic

    data = write_synthetic(out, shards=shards, seed=seed)
    Sink(output).emit(data, lambda con: con.print(
        f"wrote SYNTHETIC FP8 checkpoint {data['path']}: {data['tensors']} tensors, {data['shards']} shards, "
        f"{data['bytes']:,} bytes (random values; see its README.md)"))


def _hash_progress(sink: Sink, what: str) -> Any:
    """A rich progress bar on stderr for hashing (nothing in JSON mode); returns (context manager, callback)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    prog = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=sink.err, transient=True, disable=sink.json)
    task = prog.add_task(what, total=None)

    def cb(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, cb


def download(
    out: Annotated[Path, typer.Option("--out", help="Local directory for the checkpoint.")],
    spec: SpecOpt = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="File holding a Hugging Face token (else HF_TOKEN).")] = None,
    clean_partials: Annotated[bool, typer.Option("--clean-partials", help="Delete partial files of interrupted transfers first (restart instead of resume).")] = False,
    dry_run: DryRunOpt = False,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Download model.repo@model.revision with the spec's allow/ignore patterns: free-disk check first
    (plus the BF16 size when model.precision is bf16), resume from the last byte, sha256 of every LFS file
    against the hub's (a bad file is deleted and fetched again), then `weights verify --checksums`."""
    import json

    from dsv3ctl.adapters import hub
    from dsv3ctl.core.checkpoint import (
        CHECKSUMS_NAME,
        STATE_DIR,
        checksums_doc,
        human_bytes,
        plan_download,
        stale_partials,
        verify_checkpoint,
    )
    from dsv3ctl.errors import RuntimeFailure
    from dsv3ctl.fsutil import atomic_write_text

    s = load(spec)
    sink = Sink(output)
    token = hub.read_token(token_file)
    files, sha = hub.remote_files(s.model.repo, s.model.revision, token)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    plan = plan_download(files, s.model.allow_patterns, s.model.ignore_patterns, out,
                         cast_planned=s.model.precision == "bf16", free_bytes=free)
    for pat in plan.unmatched_patterns:
        sink.info(f"[yellow]warn[/] pattern {pat!r} matches no file in {s.model.repo}@{sha[:12]}")
    sink.info(f"{s.model.repo}@{sha[:12]}: {len(plan.files)} files, {human_bytes(plan.total_bytes)}; "
              f"{len(plan.fetch)} to fetch ({human_bytes(plan.download_bytes)}), need {human_bytes(plan.required_bytes)}"
              f"{' incl. the BF16 cast' if plan.cast_bytes else ''}, free {human_bytes(free)}")
    if not plan.fits:
        raise RuntimeFailure(f"{out}: {human_bytes(free)} free, {human_bytes(plan.required_bytes)} needed; "
                             "free space or choose another --out")
    if dry_run:
        sink.emit({"repo": s.model.repo, "commit": sha, "fetch": [f.path for f in plan.fetch],
                   "required_bytes": plan.required_bytes, "free_bytes": free})
        return
    for p in stale_partials(out):
        if p.suffix != ".incomplete" or clean_partials:
            n = p.stat().st_size
            p.unlink(missing_ok=True)
            if p.suffix == ".incomplete":
                sink.info(f"removed partial file {p.relative_to(out)} ({n:,} bytes): --clean-partials")
    manifest = {f.path: {"size": f.size, "sha256": f.sha256} for f in plan.files}
    atomic_write_text(out / STATE_DIR / CHECKSUMS_NAME, checksums_doc(manifest, f"{s.model.repo}@{sha}"))
    prog, cb = _hash_progress(sink, "sha256")
    with prog:
        res = hub.fetch(s.model.repo, sha, plan.files, out, token, sink.info, progress=cb)
        rep = verify_checkpoint(out, checksums=True, progress=cb)
    atomic_write_text(out / STATE_DIR / "download.json", json.dumps({"repo": s.model.repo, "commit": sha}) + "\n")
    data = {**rep.to_json(), "fetch": res.to_json()}

    def human(con: Console) -> None:
        _report_human(rep.to_json())(con)
        for rel in res.rejected:
            con.print(f"  [red]deleted[/] {rel}: sha256 differs from the hub's; rerun the same command to fetch it "
                      "again", markup=True)

    sink.emit(data, human)
    if not rep.ok or res.rejected:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    group.command("download")(download)
    group.command("verify")(verify)
    group.command("cast-bf16")(cast_bf16)
    group.command("synth")(synth)
    app.add_typer(group, name="weights")
