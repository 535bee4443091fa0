"""``dsv3ctl prepare``: run the prepare Job (download, cast, convert, build, repository) into the models volume
and wait for it.

``dsv3ctl deploy`` runs the same step (:func:`prepare_step`) before it installs or upgrades the group when
``deploy.prepare.enabled`` is true. Exit codes: 0 done or already done, 1 the Job failed or outlived its
deadline (its pod state and last log lines are printed), 2 a storage rule or a GPU conflict found before
anything was created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dsv3ctl.cli._common import DryRunOpt, OutputFormat, OutputOpt, Sink, SpecOpt, load

StopOpt = Annotated[bool, typer.Option(
    "--stop-for-prepare", help="Engine mode upgrade with no spare GPUs: stop (delete) the running group so the "
                               "prepare Job can build (no serving until the new group is Ready). Without it deploy refuses.")]


def prepare_step(spec_path: Path | None, values: dict[str, Any], kube: Any, namespace: str, sink: Sink, *,
                 create_namespace: bool, stop_for_prepare: bool, wait: bool = True) -> dict[str, Any]:
    """Namespace, claim, then the prepare Job of the spec's fingerprint; returns what was done (JSON-able)."""
    from dsv3ctl.adapters import prepare_job as P
    from dsv3ctl.render.artifacts import artifact_dir
    from dsv3ctl.render.values import artifact_fingerprint

    spec = load(spec_path)
    fp = artifact_fingerprint(spec)
    adir = artifact_dir(spec, fp)
    P.ensure_namespace(kube, namespace, create_namespace, sink.info, labels=P.namespace_labels(values))
    P.check_storage(kube, values, namespace)
    P.ensure_claim(kube, values, namespace, sink.info)
    r = P.run_prepare(kube, values, namespace, fp, adir, stop_for_prepare=stop_for_prepare, wait=wait, log=sink.info)
    return {"job": r.job, "fingerprint": fp, "artifact_dir": adir, "state": r.state, "completions": r.completions}


def prepare(
    spec: SpecOpt = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace; default: deploy.namespace.")] = None,
    release: Annotated[str | None, typer.Option("--release", help="Release name; default: deploy.release.")] = None,
    create_namespace: Annotated[bool, typer.Option("--create-namespace", help="Create the namespace if missing.")] = False,
    stop_for_prepare: StopOpt = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Watch the Job until it ends (deadline: deploy.prepare.timeout_s).")] = True,
    kubeconfig: Annotated[str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file.")] = None,
    purge: Annotated[bool, typer.Option(
        "--purge", help="Instead of preparing: delete the artifact directories of every other fingerprint (a short "
                        "Job on the volume; rollbacks to them rebuild).")] = False,
    keep: Annotated[list[str] | None, typer.Option("--keep", help="With --purge: a fingerprint to keep too (repeat).")] = None,
    dry_run: DryRunOpt = False, output: OutputOpt = OutputFormat.table,
) -> None:
    """Create the prepare Job for the spec's artifact fingerprint and wait until it succeeds (or, with --purge, remove the other fingerprints' directories).

    The artifacts go to {mount_path}/{artifacts_dir}/{fingerprint}/ (see docs/deploy.md); a Job of the same fingerprint that already succeeded means the directory is complete, and nothing is created. Before anything is created: the storage access-mode rules, and in engine mode that the Job's GPUs are free without taking the running group's (else exit 2, or --stop-for-prepare).
    """
    from dsv3ctl.adapters.kube import Kube
    from dsv3ctl.render.artifacts import artifact_dir
    from dsv3ctl.render.values import artifact_fingerprint, render_values

    s = load(spec)
    values = render_values(s, namespace=namespace, release=release)
    ns = values["deploy"]["namespace"]
    sink = Sink(output)
    if dry_run:
        fp = artifact_fingerprint(s)
        sink.emit({"fingerprint": fp, "artifact_dir": artifact_dir(s, fp), "dry_run": True},
                  lambda con: con.print(f"dry run: would run the prepare Job for fingerprint {fp} "
                                        f"({artifact_dir(s, fp) or 'fixed launch.* paths'}) in {ns}"))
        return
    kube = Kube(kubeconfig.split(":")[0] if kubeconfig else None)
    kube.ping()
    if purge:
        from dsv3ctl.adapters.prepare_job import run_purge
        from dsv3ctl.errors import SpecError
        from dsv3ctl.render.artifacts import artifacts_root

        fp, root = artifact_fingerprint(s), artifacts_root(s)
        if not root:
            raise SpecError("--purge needs content-addressed artifacts; deploy.storage.artifacts_dir is empty",
                            hint="set deploy.storage.artifacts_dir (default: artifacts)")
        bad = [k for k in keep or [] if not (len(k) == 16 and all(c in "0123456789abcdef" for c in k))]
        if bad:
            raise SpecError(f"--keep {bad[0]!r} is not a fingerprint (16 hex digits, as `dsv3ctl undeploy` and the "
                            "prepare Jobs' names show)")
        removed = run_purge(kube, values, ns, fp, root, keep or [], log=sink.info)
        sink.emit({"kept": sorted({fp, *(keep or [])}), "removed_records": removed},
                  lambda con: con.print(f"purged {root}: kept {', '.join(sorted({fp, *(keep or [])}))}"))
        return
    res = prepare_step(spec, values, kube, ns, sink, create_namespace=create_namespace,
                       stop_for_prepare=stop_for_prepare, wait=wait)
    sink.emit(res, lambda con: con.print(f"prepare {res['state']}: {res['job']} -> {res['artifact_dir'] or res['fingerprint']}"))


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
