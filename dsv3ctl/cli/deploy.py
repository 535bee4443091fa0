"""``dsv3ctl render | deploy | status | logs | undeploy``: the Helm chart (helm/dsv3) on LeaderWorkerSet.

The spec becomes chart values in one place (:mod:`dsv3ctl.render.values`); helm is run as a subprocess
(:mod:`dsv3ctl.adapters.helm`); the cluster is read through the Kubernetes API (:mod:`dsv3ctl.adapters.kube`).
Exit codes: 0 ok, 1 runtime failure (cluster, helm, not Ready), 2 spec/usage error or failed preflight check
of the spec's needs. Heavy imports live inside the commands.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dsv3ctl.cli._common import DryRunOpt, OutputFormat, OutputOpt, Sink, SpecOpt, load
from dsv3ctl.core.names import Names

NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace; default: deploy.namespace of the spec.")]
ReleaseOpt = Annotated[str | None, typer.Option("--release", help="Helm release name; default: deploy.release of the spec.")]
ChartOpt = Annotated[Path | None, typer.Option("--chart", help="Chart directory; default: $DSV3CTL_CHART, else the chart shipped with dsv3ctl (helm/dsv3 of a checkout).")]
#: ``logs`` keeps ``-f`` for ``--follow`` (as kubectl logs -f), so its ``--spec`` has no short form
LogsSpecOpt = Annotated[Path | None, typer.Option(
    "--spec", help="Deployment spec (dsv3.yaml); default: the embedded default spec. (No -f here: -f is --follow.)",
    envvar="DSV3CTL_SPEC", show_envvar=True)]
KubeconfigOpt = Annotated[str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file.")]


def _chart(chart: Path | None) -> Path:
    from dsv3ctl.errors import RuntimeFailure
    from dsv3ctl.render.values import chart_dir

    c = chart or chart_dir()
    if not (c / "Chart.yaml").is_file():
        raise RuntimeFailure(f"no Helm chart at {c}", hint="pass --chart DIR or set DSV3CTL_CHART to the helm/dsv3 directory")
    return c


def _values(spec: Path | None, namespace: str | None, release: str | None) -> dict[str, Any]:
    from dsv3ctl.render.values import render_values

    return render_values(load(spec), namespace=namespace, release=release)


def _write_values(values: dict[str, Any], path: Path) -> None:
    from dsv3ctl.fsutil import atomic_write_text
    from dsv3ctl.render.values import values_yaml

    atomic_write_text(path, values_yaml(values))


def _kube(kubeconfig: str | None):  # type: ignore[no-untyped-def]
    from dsv3ctl.adapters.kube import Kube

    return Kube(kubeconfig.split(":")[0] if kubeconfig else None)


# --------------------------------------------------------------------------------------------- render


def render(
    out: Annotated[Path, typer.Option("--out", help="Directory for values.yaml and one manifest file per object.")],
    spec: SpecOpt = None, namespace: NamespaceOpt = None, release: ReleaseOpt = None, chart: ChartOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Spec -> chart values (values.yaml) -> `helm template` -> one file per object in OUT.

    Files: OUT/values.yaml and OUT/NN-{kind}-{name}.yaml (NN = helm's order). Earlier manifest files in OUT are replaced. No cluster is contacted (lookup is empty, so the SSH Secret gets a fresh key). Exit 2 when the chart cannot deploy the spec.
    """
    import yaml

    from dsv3ctl.adapters import helm
    from dsv3ctl.fsutil import atomic_write_text

    values = _values(spec, namespace, release)
    c = _chart(chart)
    out.mkdir(parents=True, exist_ok=True)
    _write_values(values, out / "values.yaml")
    text = helm.template(c, values["deploy"]["release"], values["deploy"]["namespace"], out / "values.yaml")
    objs = helm.split_manifests(text)
    for old in out.glob("[0-9][0-9]-*.yaml"):
        old.unlink()
    files = []
    for i, o in enumerate(objs):
        name = f"{i:02d}-{o['kind'].lower()}-{o['metadata']['name']}.yaml"
        atomic_write_text(out / name, yaml.safe_dump(o, sort_keys=False, width=120))
        files.append({"file": name, "kind": o["kind"], "name": o["metadata"]["name"]})
    sink = Sink(output)
    def human(con) -> None:  # type: ignore[no-untyped-def]
        con.print(f"wrote {out / 'values.yaml'}")
        for f in files:
            con.print(f"wrote {out / f['file']}  ({f['kind']} {f['name']})")

    sink.emit({"out": str(out), "values": "values.yaml", "objects": files}, human)


# --------------------------------------------------------------------------------------------- deploy


def deploy(
    spec: SpecOpt = None, namespace: NamespaceOpt = None, release: ReleaseOpt = None, chart: ChartOpt = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Watch until every group is Ready.")] = True,
    timeout: Annotated[int | None, typer.Option("--timeout", help="Seconds for the preflight reads, helm and the wait for Ready together (the prepare Job has its own deadline, deploy.prepare.timeout_s); default serving.load_timeout_s + 300.")] = None,
    grace: Annotated[int | None, typer.Option("--grace", min=1, help="Seconds a pod may stay unschedulable (with no cluster autoscaler adding nodes for it) before deploy fails; default deploy.unschedulable_grace_s.")] = None,
    create_namespace: Annotated[bool, typer.Option("--create-namespace", help="Create the namespace if missing.")] = False,
    skip_preflight: Annotated[bool, typer.Option("--skip-preflight", help="Do not stop on failed preflight checks (the scheduler then reports).")] = False,
    stop_for_prepare: Annotated[bool, typer.Option(
        "--stop-for-prepare", help="Engine mode upgrade with no spare GPUs: stop (delete) the running group so the "
                                   "prepare Job can build; the upgrade recreates it (no serving until it is Ready).")] = False,
    kubeconfig: KubeconfigOpt = None, dry_run: DryRunOpt = False, output: OutputOpt = OutputFormat.table,
) -> None:
    """Preflight through the API, the prepare Job (deploy.prepare.enabled), `helm upgrade --install` with the spec's values, then watch until Ready.

    Prepare: an ordinary Job created before the group is installed or upgraded, watched until it succeeds (deadline deploy.prepare.timeout_s); see `dsv3ctl prepare`.

    Preflight: the LWS CRD is installed; enough schedulable nodes have gpus_per_node allocatable nvidia.com/gpu (and the RDMA resource) with the GPU product label, and that many GPUs still free (not requested by running pods of other releases); the namespace, the token/SSH Secrets and the PVC exist. A failed check exits 2 before anything is changed (--skip-preflight deploys anyway). An API server that does not answer exits 1.

    While waiting, exit 1 with the evidence when: a group was recreated deploy.max_recreations times (a container restart makes LeaderWorkerSet recreate the whole group, so a crash loop never shows as CrashLoopBackOff): the pod, the count, the container's exit code and reason and its last log lines; a pod stays unschedulable for --grace seconds (default deploy.unschedulable_grace_s) and no cluster autoscaler is adding nodes for it (while one is, the wait goes on up to --timeout); a container stays in image-pull or config-error backoff for 20 s.
    """
    from dsv3ctl.adapters import helm
    from dsv3ctl.adapters import kube as k
    from dsv3ctl.errors import RuntimeFailure, SpecError

    sink = Sink(output)
    values = _values(spec, namespace, release)
    ns, rel = values["deploy"]["namespace"], values["deploy"]["release"]
    c = _chart(chart)
    t = timeout if timeout is not None else int(values["serving"]["load_timeout_s"]) + 300
    start = time.monotonic()
    kube = _kube(kubeconfig)
    kube.deadline = k.Deadline(t, f"the preflight reads of release {rel} in namespace {ns}")
    checks = k.preflight(kube, values, ns, create_namespace=create_namespace)
    kube.deadline = None
    failed = [x for x in checks if not x.ok and x.severity == "error"]
    for x in checks:
        mark = "ok" if x.ok and x.severity != "warning" else ("warn" if x.ok else ("SKIP" if skip_preflight else "FAIL"))
        sink.info(f"  preflight {mark:>4} {x.name}: {x.message}")
    result: dict[str, Any] = {"release": rel, "namespace": ns, "preflight": [vars(x) for x in checks]}
    if failed and not skip_preflight:
        sink.emit({**result, "ok": False}, lambda con: None)
        raise SpecError("preflight failed: " + ", ".join(x.name for x in failed) + " (the FAIL lines above say why "
                        "and what to change)", hint="fix the cluster or the spec; --skip-preflight deploys anyway")
    running = k.running_shape(kube, ns, Names.of(values["deploy"]))
    want = (int(values["parallelism"]["nodes"]), int(values["deploy"]["replicas"]))
    if running and running != want:
        sink.info(f"  note: release {rel} runs {running[1]} group(s) of {running[0]} pod(s); this spec has "
                  f"{want[1]} of {want[0]}: the upgrade replaces every running group (a LeaderWorkerSet group "
                  "is one MPI world; its size cannot change in place), so serving stops until the new groups are Ready")
    from dsv3ctl.adapters.prepare_job import check_storage

    check_storage(kube, values, ns)  # an existing claim's access modes, before anything is created
    if dry_run:
        sink.info(f"dry run: would run helm upgrade --install {rel} {c} -n {ns} with the spec's values"
                  + (f", replacing the running {running[1]} x {running[0]} group(s)" if running and running != want
                     else ""))
        sink.emit({**result, "ok": True, "dry_run": True}, lambda con: None)
        return
    if create_namespace:  # before helm's --create-namespace, which would create it without the Pod Security label
        from dsv3ctl.adapters.prepare_job import ensure_namespace, namespace_labels

        ensure_namespace(kube, ns, True, sink.info, labels=namespace_labels(values))
    if values["deploy"]["prepare"]["enabled"]:
        from dsv3ctl.cli.prepare import prepare_step

        result["prepare"] = prepare_step(spec, values, kube, ns, sink, create_namespace=create_namespace,
                                         stop_for_prepare=stop_for_prepare)
        start = time.monotonic()  # the prepare Job has its own deadline (deploy.prepare.timeout_s); --timeout is the rest
    with tempfile.TemporaryDirectory(prefix="dsv3ctl-") as tmp:
        vf = Path(tmp) / "values.yaml"
        _write_values(values, vf)
        sink.info(f"helm upgrade --install {rel} -n {ns}")
        helm.upgrade_install(c, rel, ns, vf, create_namespace=create_namespace,
                             timeout_s=max(1, min(300, t)), kill_after_s=5)
    if not wait:
        sink.emit({**result, "ok": True, "waited": False}, lambda con: con.print(f"installed {rel}; `dsv3ctl status -n {ns} --release {rel}`"))
        return

    uids: dict[str, str] = {}

    def change(p: k.PodInfo) -> None:
        state = "Terminating" if p.terminating else ("Ready" if p.ready else p.phase)
        # an upgrade recreates a pod under the same name: say which one a line is about
        new = p.name in uids and uids[p.name] != p.uid
        uids[p.name] = p.uid
        sink.info(f"  group {p.group} {p.role:<6} {p.name:<28} {state:<11} node={p.node or '-':<14} "
                  f"restarts={p.restarts}{'  (new pod ' + p.uid[:8] + ')' if new else ''}"
                  f"{'  ' + p.reason if p.reason else ''}")

    from rich.markup import escape

    d = values["deploy"]
    res = k.wait_ready(kube, ns, Names.of(d), timeout_s=max(1.0, t - (time.monotonic() - start)),
                       grace_s=grace if grace is not None else int(d["unschedulable_grace_s"]),
                       max_recreations=int(d["max_recreations"]), on_change=change, on_note=lambda s: sink.info(f"  {escape(s)}"))
    result.update(ok=res.ok, message=res.message, events=res.events, details=res.details)
    if not res.ok:
        sink.emit(result, lambda con: None)
        ev = "\n".join(f"  {e['object']}: {e['reason']}: {e['message']}" for e in res.events)
        detail = "\n".join(res.details)
        raise RuntimeFailure(f"{rel} did not become Ready: {res.message}" + (f"\n{detail}" if detail else "")
                             + (f"\nevents:\n{ev}" if ev else ""),
                             hint=f"`dsv3ctl status -n {ns} --release {rel}`; `dsv3ctl undeploy -n {ns} --release {rel}`")
    sink.emit(result, lambda con: con.print(f"[green]Ready[/]: {res.message}"))


# --------------------------------------------------------------------------------------------- status


def _target(spec: Path | None, namespace: str | None, release: str | None) -> tuple[str, Names]:
    """(namespace, the release's object names) from the flags, else from the spec (validated only as far as
    needed); a spec given with both flags still supplies ``deploy.name_override`` / ``fullname_override``."""
    if namespace and release and spec is None:
        return namespace, Names(release)
    d = load(spec).deploy
    return namespace or d.namespace, replace(Names.of(d), release=release or d.release)


def status(spec: SpecOpt = None, namespace: NamespaceOpt = None, release: ReleaseOpt = None,
           kubeconfig: KubeconfigOpt = None, output: OutputOpt = OutputFormat.table,
           timeout: Annotated[float, typer.Option("--timeout", help="Seconds for all the API reads of the status together.")] = 30,
           ) -> None:
    """Groups, pods (ready/not, restarts, node), the LWS counters and the endpoints of a release.

    Exit 0 when every group is Ready, 1 when not (or the release has no LeaderWorkerSet, or the API server does not answer within --timeout).
    """
    from dsv3ctl.adapters import kube as k

    ns, names = _target(spec, namespace, release)
    rel = names.release
    kube = _kube(kubeconfig)
    kube.deadline = k.Deadline(timeout, f"the status of release {rel} in namespace {ns}")
    st = k.status(kube, ns, names, fabric=True)

    def human(con) -> None:  # type: ignore[no-untyped-def]
        from rich.table import Table

        if not st["exists"]:
            con.print(f"no LeaderWorkerSet {st['lws']} in namespace {ns}")
            return
        con.print(f"[bold]{st['lws']}[/] in {ns}: {st['ready_replicas']}/{st['replicas']} group(s) ready, "
                  f"size {st['size']}; " + ", ".join(f"{a}={b}" for a, b in st["conditions"].items()))
        t = Table(show_edge=False)
        for col in ("group", "role", "pod", "ready", "phase", "restarts", "node", "reason"):
            t.add_column(col)
        for g in st["groups"]:
            for p in g["pods"]:
                t.add_row(str(g["index"]), p["role"] + ("" if p["role"] == "leader" else f" {p['worker_index']}"),
                          p["name"], "yes" if p["ready"] else "no",
                          "Terminating" if p["terminating"] else p["phase"], str(p["restarts"]), p["node"], p["reason"])
        # never truncate pod or node names (a pipe gives rich 80 columns): as wide as the table needs
        need = con.measure(t, options=con.options.update(max_width=1000)).maximum
        if need > con.width:  # rich caps print(width=) at the console's width: print through a wider one
            from rich.console import Console

            con = Console(file=con.file, width=need, highlight=False, soft_wrap=True,
                          color_system=con.color_system)
        con.print(t)
        for g in st["groups"]:
            f = g.get("fabric")
            if f:
                bw = f" busbw {f['busbw_gbs']} GB/s at {f['bytes']} B," if f.get("busbw_gbs") is not None else ""
                con.print(f"  group {g['index']} fabric check: {f['status']} ({f['backend']}, world {f['world']},{bw} "
                          f"inter-node {', '.join(f['inter_node']) or 'n/a'}"
                          + (f"; problems: {', '.join(f['problems'])}" if f["problems"] else "") + f") at {f['at']}",
                          markup=False, highlight=False)
        rec = st.get("recreations") or []
        if rec:
            con.print(f"  groups recreated by LeaderWorkerSet: {len(rec)} time(s); last: {rec[-1]['message']}",
                      markup=False, highlight=False)
        for name, url in st["endpoints"].get("urls", {}).items():
            con.print(f"  {name:<8} {url}")
        ports = st["endpoints"].get("ports", {})
        if ports:
            con.print(f"  (in-cluster names; from a workstation: `kubectl -n {ns} port-forward "
                      f"svc/{st['endpoints']['service']} " + " ".join(f"{p}:{p}" for p in ports.values())
                      + "`, then 127.0.0.1)")

    Sink(output).emit(st, human)
    if not st["ready"]:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------- logs


class Role(str, Enum):  # noqa: UP042 - same style as _common.OutputFormat
    leader = "leader"
    worker = "worker"


def logs(
    role: Annotated[Role, typer.Argument(help="leader or worker")] = Role.leader,
    index: Annotated[int, typer.Argument(help="Worker index (1..nodes-1) for `worker`.")] = 1,
    group: Annotated[int, typer.Option("--group", "-g", help="Group (model instance) index.")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new lines.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", help="Only the last N lines.")] = None,
    spec: LogsSpecOpt = None, namespace: NamespaceOpt = None, release: ReleaseOpt = None, kubeconfig: KubeconfigOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds the API server may take to find the pod and open (or, with -f, re-open) the log.")] = 30,
) -> None:
    """Print (or with -f stream) the dsv3 container log of the leader or of worker N of a group.

    `dsv3ctl logs` is the leader, `dsv3ctl logs worker 2 -f` follows worker 2 (-f is --follow, as in kubectl). Exit 1 when the pod does not exist or its node's kubelet cannot serve the log (always so on the kwok testbed, whose pods run no containers).
    """
    import sys

    from dsv3ctl.adapters import kube as k
    from dsv3ctl.errors import RuntimeFailure, SpecError

    if role == Role.worker and index < 1:
        raise SpecError(f"worker index {index}: workers are numbered 1..nodes-1 (0 is the leader); use `logs leader`")
    ns, names = _target(spec, namespace, release)
    rel = names.release
    kube = _kube(kubeconfig)
    wi = 0 if role == Role.leader else index
    who = f"{role.value}{'' if wi == 0 else ' ' + str(wi)}"
    kube.deadline = k.Deadline(timeout, f"the {who} pod of group {group} of release {rel} in namespace {ns}")
    pod = k.find_pod(kube, ns, names, group, wi)
    if pod is None:
        raise RuntimeFailure(f"no {who} pod in group {group} of release {rel} "
                             f"in namespace {ns}", hint=f"`dsv3ctl status -n {ns} --release {rel}` lists the pods")

    def out(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    k.write_log(kube, ns, pod, out, container="dsv3", follow=follow, tail=tail, timeout_s=timeout)


# --------------------------------------------------------------------------------------------- undeploy


def undeploy(
    spec: SpecOpt = None, namespace: NamespaceOpt = None, release: ReleaseOpt = None,
    purge_storage: Annotated[bool, typer.Option("--purge-storage", help="Also delete the chart-created PVC (weights and engines).")] = False,
    timeout: Annotated[int, typer.Option("--timeout", help="Seconds for helm uninstall and the wait until nothing of the release is left, together.")] = 300,
    kubeconfig: KubeconfigOpt = None, dry_run: DryRunOpt = False, output: OutputOpt = OutputFormat.table,
) -> None:
    """`helm uninstall`, then wait until no object of the release is left.

    Objects waited for: pods, StatefulSets, Services, Secrets, ConfigMaps, the LeaderWorkerSet. A chart-created PVC is kept unless --purge-storage. Exit 1 when something is still there after --timeout, or the API server does not answer within it.
    """
    from dsv3ctl.adapters import helm
    from dsv3ctl.adapters import kube as k
    from dsv3ctl.errors import RuntimeFailure

    sink = Sink(output)
    ns, names = _target(spec, namespace, release)
    rel = names.release
    kube = _kube(kubeconfig)
    deadline = k.Deadline(timeout, f"every object of release {rel} in namespace {ns} to be deleted")
    kube.deadline = deadline
    kube.ping()  # one clear error when the API server is down, before helm's own
    if dry_run:
        sink.emit({"release": rel, "namespace": ns, "dry_run": True, "present": k.leftovers(kube, ns, names)},
                  lambda con: con.print(f"dry run: would uninstall {rel} from {ns}"))
        return

    def helm_left() -> float:
        if deadline.expired():
            raise deadline.failure()
        return deadline.left()

    try:
        if helm.release_exists(rel, ns, timeout_s=helm_left()):
            sink.info(f"helm uninstall {rel} -n {ns}")
            deadline.last = f"helm release {rel} present"
            helm.uninstall(rel, ns, timeout_s=max(1, int(helm_left())), kill_after_s=5)
        else:
            sink.info(f"no helm release {rel} in {ns}; removing what is left")
    except RuntimeFailure as e:
        if deadline.what in e.message:
            raise
        raise RuntimeFailure(f"{e.message} (waiting for {deadline.what}, deadline {timeout} s; last state seen: "
                             f"{deadline.last or 'none yet'})", hint=e.hint) from None
    from dsv3ctl.adapters import prepare_job as P

    artifacts = [j["fingerprint"] for j in P.prepared(kube, ns, rel) if j["state"] == "succeeded"]
    removed = P.delete_prepare(kube, ns, rel) + P.delete_test_pods(kube, ns, rel)  # not part of the release
    kept = k.release_claims(kube, ns, names, delete=purge_storage)
    left = k.wait_gone(kube, ns, names, deadline)
    data = {"release": rel, "namespace": ns, "left": left, "kept_pvcs": kept, "removed": removed,
            "kept_artifacts": artifacts}
    if left:
        sink.emit(data, lambda con: None)
        raise RuntimeFailure(f"gave up after {timeout} s waiting for {deadline.what}; still there: {', '.join(left)}",
                             hint=f"a longer --timeout waits longer; `kubectl -n {ns} get all -l app.kubernetes.io/instance={rel}`")

    def human(con) -> None:  # type: ignore[no-untyped-def]
        con.print(f"{rel} removed from {ns}" + (f"; kept PVC {', '.join(kept)} (--purge-storage deletes it)"
                                                  if kept else ""))
        if artifacts:
            con.print("kept on the models volume (artifact directories of fingerprints " + ", ".join(artifacts)
                      + "; docs/operations.md: purging old artifacts)")

    sink.emit(data, human)


def register(app: typer.Typer) -> None:
    app.command("render")(render)
    app.command("deploy")(deploy)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("undeploy")(undeploy)
