"""``dsv3ctl plan``: validate the parallel layout against DeepSeek-V3 and size memory per GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dsv3ctl.cli._common import OutputFormat, OutputOpt, Sink, SpecOpt, load

ModelConfigOpt = Annotated[
    Path | None,
    typer.Option("--model-config", help="A checkpoint's config.json (or its directory); default: the real "
                                        "deepseek-ai/DeepSeek-V3 config.json embedded in dsv3ctl."),
]


def plan(spec: SpecOpt = None, model_config: ModelConfigOpt = None, output: OutputOpt = OutputFormat.table) -> None:
    """Check the layout (world size, tp/moe_ep divisibility, engine-mode rules, GPU) and the memory fit.

    Exit code 0 when every check passes, 2 when any fails (each failure names the field, the rule and a
    valid alternative).
    """
    from dsv3ctl.core.model import DeepSeekV3Config
    from dsv3ctl.core.planner import make_plan

    s = load(spec)
    model = DeepSeekV3Config.load(model_config) if model_config else None
    p = make_plan(s, model)
    data = p.to_json()
    if s.serving.mode == "llmapi":  # the LLM API options `repo build` writes, with serving.profile applied
        from dsv3ctl.render.model_repo import llm_api_args

        data["llmapi_options"] = {"profile": s.serving.profile, "options": llm_api_args(s, s.model.repo)}
    sink = Sink(output)

    def human(con) -> None:  # type: ignore[no-untyped-def]
        from rich.table import Table

        par = data["parallelism"]
        con.print(f"[bold]{data['model']}[/] {data['precision']} / {data['mode']} mode on {data['gpu']}: "
                  f"world size {data['world_size']} = {par['nodes']} node{'s' if par['nodes'] != 1 else ''} x "
                  f"{par['gpus_per_node']} GPU{'s' if par['gpus_per_node'] != 1 else ''}; "
                  f"tp={par['tp']} pp={par['pp']} moe_tp={par['moe_tp']} moe_ep={par['moe_ep']}")
        pr = data["params"]
        con.print(f"parameters: main {pr['main'] / 1e9:.1f}B, MTP {pr['mtp'] / 1e9:.1f}B, activated "
                  f"{pr['activated'] / 1e9:.1f}B per token, checkpoint {pr['total'] / 1e9:.1f}B in "
                  f"{data['tensors']['checkpoint_total']:,} tensors ({data['tensors']['checkpoint_bytes'] / 1e9:.0f} GB)")
        mem = data["memory"]["per_gpu_gib"]
        if mem["weights"]:
            t = Table(title="memory per GPU (GiB)", show_edge=False)
            for k in ("total", "weights", "activations", "kv_cache", "kv_pool", "free"):
                t.add_column(k, justify="right")
            t.add_row(*(f"{mem[k]:.2f}" for k in ("total", "weights", "activations", "kv_cache", "kv_pool", "free")))
            con.print(t)
            con.print("  free = total - weights - activations - kv_cache (what max_batch_size x max_seq_len needs); "
                      "kv_pool = what TensorRT-LLM gives the KV cache (kv_cache_free_gpu_mem_fraction of the rest)")
            kv = data["kv_cache"]
            con.print(f"KV cache: {kv['bytes_per_token']:,} B/token (MLA latent, all layers), "
                      f"{kv['bytes_per_token_per_gpu']:,} B/token per GPU; needs {kv['required_tokens']:,} tokens, "
                      f"pool holds {kv['capacity_tokens']:,}")
        if "llmapi_options" in data:
            lo = data["llmapi_options"]
            con.print(f"llmapi options (profile {lo['profile']}): " + ", ".join(
                f"{k}={v}" for k, v in lo["options"].items() if k not in ("model", "backend")), markup=False)
        for c in data["checks"]:
            mark = "[green]ok[/]" if c["ok"] and c["severity"] != "warning" else (
                "[yellow]warn[/]" if c["ok"] else "[red]FAIL[/]")
            # the message is plain text: brackets in it (deploy.node_selector[key]) are not markup
            con.print(f"  {mark:>5} {c['name']}: {escape(c['message'])}", markup=True)
        if sink.json is False and STATE_VERBOSE():
            for a in data["assumptions"]:
                con.print(f"  [dim]assumes: {a}[/]")

    sink.emit(data, human)
    if not p.ok:
        raise typer.Exit(2)


def STATE_VERBOSE() -> bool:  # noqa: N802
    from dsv3ctl.cli._common import STATE

    return STATE.verbose > 0


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
