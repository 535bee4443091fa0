"""Adapter to the Kubernetes API (official ``kubernetes`` Python client): preflight, watch, events,
status, logs and leftovers of a dsv3 release.

Objects are found by the chart's labels (``app.kubernetes.io/instance=<release>``,
``app.kubernetes.io/name=dsv3``, or ``deploy.name_override``; every name and selector comes from
:class:`dsv3ctl.core.names.Names`) and LWS's pod labels (``leaderworkerset.sigs.k8s.io/group-index``,
``.../worker-index``); sources: LWS v0.9.0 API (labels, status fields), Kubernetes API reference
(pod conditions: PodScheduled=False/Unschedulable carries the scheduler's reason).
Errors: :class:`dsv3ctl.errors.RuntimeFailure` (exit 1) when the cluster cannot be reached: every request
goes through :class:`Kube`'s one guarded ``ApiClient``, which names the server URL and the fix.

No request can hang: every call carries a (connect, read) timeout (:data:`CONNECT_TIMEOUT_S`,
:data:`READ_TIMEOUT_S`, both cut to what is left of the command's :class:`Deadline`), urllib3's own
retries are off, and waits (:func:`wait_ready`, :func:`wait_gone`) re-list and re-watch with
:class:`Backoff` until their one overall deadline, whose message names what was waited for and the last
state seen. How the ``kubernetes`` client (37.0.2, kubernetes-client/python) applies them:
``kubernetes/client/rest.py:236-246`` turns ``_request_timeout=(connect, read)`` into
``urllib3.Timeout(connect=, read=)`` (a single number would be a *total*), ``rest.py:155-156`` passes
``Configuration.retries`` to the urllib3 pool (None = urllib3's default of 3 retries per request);
``kubernetes/watch/watch.py:213-215`` disables the watch's own reconnects when ``timeout_seconds`` is given
(the server then ends the stream after that many seconds), and ``watch.py:239-247`` then raises an
``ERROR`` event (410 Gone: the resourceVersion is too old) as ``ApiException(status=410)``.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from dsv3ctl.core.names import Names
from dsv3ctl.core.planner import Check  # one check record for plan and preflight
from dsv3ctl.errors import RuntimeFailure

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Event, V1ObjectMeta

    from dsv3ctl.core.deploy_watch import PodSeen

LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
LWS_CRD = f"{LWS_PLURAL}.{LWS_GROUP}"
LWS_INSTALL = ("kubectl apply --server-side -f "
               "https://github.com/kubernetes-sigs/lws/releases/download/v0.9.0/manifests.yaml")
L_GROUP = "leaderworkerset.sigs.k8s.io/group-index"
L_WORKER = "leaderworkerset.sigs.k8s.io/worker-index"
#: container waiting reasons that will not fix themselves
BAD_WAITING = {"ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff", "CreateContainerConfigError",
               "CreateContainerError", "InvalidImageName", "RunContainerError"}
#: seconds a container may stay in one of :data:`BAD_WAITING` before the wait fails
WAITING_GRACE_S = 20.0
#: seconds between two reads of the events of unschedulable pods (the cluster autoscaler's verdicts)
AUTOSCALER_POLL_S = 5.0
L_REVISION = "leaderworkerset.sigs.k8s.io/template-revision-hash"  # lws v0.9.0 leaderworkerset_types.go:63


#: seconds for the TCP connect and the TLS handshake of one request (urllib3 applies the connect timeout to
#: both: the socket keeps it until the handshake is done)
CONNECT_TIMEOUT_S = 5.0
#: seconds one socket read may block: an answer, or the next chunk of a watch / log stream
READ_TIMEOUT_S = 20.0
#: seconds a pod watch stays open before the state is re-read (the watch's ``timeout_seconds``)
WATCH_BLOCK_S = 2


class Deadline:
    """One overall deadline of a command that waits.

    ``seconds`` from now; ``what`` names what is waited for ("release dsv3 in namespace dsv3 to become
    Ready"); ``last`` is the last state seen and ``last_error`` the last failed request, both put into
    :meth:`failure`'s message.
    """

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = float(seconds), what
        self.end = time.monotonic() + self.seconds
        self.last = ""
        self.last_error = ""

    def left(self) -> float:
        """Seconds left (negative once expired)."""
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def failure(self) -> RuntimeFailure:
        """The one error when the deadline has passed (exit 1)."""
        msg = f"gave up after {self.seconds:g} s waiting for {self.what}; last state seen: {self.last or 'none yet'}"
        if self.last_error:
            msg += f"; last error: {self.last_error}"
        return RuntimeFailure(msg, hint="a longer --timeout waits longer; `dsv3ctl status` shows the state now")


@dataclass
class Backoff:
    """Capped exponential backoff with jitter between retries of a failed list/watch.

    The n-th delay (seconds) is ``min(cap, base * 2**n)`` times a uniform factor in [0.5, 1] ("equal
    jitter": never less than half the step, so a server that keeps answering 410 Gone is asked at most a
    few times a second at first and every ``cap/2``-``cap`` s later). :meth:`reset` after a success.
    """

    base: float = 0.25
    cap: float = 8.0
    n: int = 0

    def next(self) -> float:
        d = min(self.cap, self.base * 2 ** self.n) * random.uniform(0.5, 1.0)
        self.n = min(self.n + 1, 30)
        return d

    def reset(self) -> None:
        self.n = 0

    def sleep(self, deadline: Deadline | None = None) -> None:
        """Sleep the next delay, never past ``deadline``."""
        d = self.next()
        if deadline is not None:
            d = min(d, max(0.0, deadline.left()))
        time.sleep(d)


class ApiUnreachable(RuntimeFailure):
    """The API server did not answer (refused, timed out, reset, TLS failure): exit 1. ``short`` is the
    message without the wait's context (what a retry loop keeps as its last error)."""

    def __init__(self, message: str, hint: str | None = None, short: str = "") -> None:
        super().__init__(message, hint)
        self.short = short or message


def names(release: str | Names) -> Names:
    """The release's object names (:class:`dsv3ctl.core.names.Names`); a bare release name has no overrides."""
    return release if isinstance(release, Names) else Names(release)


def fullname(release: str | Names) -> str:
    """The chart's object base name (``dsv3.fullname``, computed by :class:`dsv3ctl.core.names.Names`)."""
    return names(release).fullname


def selector(release: str | Names) -> str:
    return names(release).selector


def pod_selector(release: str | Names) -> str:
    return names(release).pod_selector


class _HasMeta(Protocol):
    @property
    def metadata(self) -> V1ObjectMeta | None: ...


def _name(obj: _HasMeta) -> str:
    """Name of an object read from the API server, which always sets metadata.name on stored objects."""
    meta = obj.metadata
    assert meta is not None and meta.name is not None, "API object without metadata.name"
    return meta.name


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _event_time(e: CoreV1Event) -> datetime:
    """Sort key of an event: its last/event/creation time, oldest possible when it carries none."""
    return e.last_timestamp or e.event_time or e.metadata.creation_timestamp or _EPOCH


class Kube:
    """Thin wrapper holding the API clients for one kubeconfig context.

    Every request goes through one ``ApiClient`` whose ``call_api`` maps a connection failure (urllib3's
    ``MaxRetryError``/``NewConnectionError``/timeouts, TLS errors) to one :class:`RuntimeFailure` naming the
    server URL from the kubeconfig and the fix, so no command prints a urllib3 traceback.
    """

    def __init__(self, kubeconfig: str | None = None, context: str | None = None,
                 deadline: Deadline | None = None) -> None:
        import os

        from kubernetes import client, config

        self.kubeconfig = kubeconfig or os.environ.get("KUBECONFIG", "").split(":")[0] or "~/.kube/config"
        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
        except Exception as e:  # noqa: BLE001 - config errors come in many types
            try:
                config.load_incluster_config()
                self.kubeconfig = "in-cluster service account"
            except Exception:  # noqa: BLE001
                raise RuntimeFailure(f"no usable kubeconfig: {e}",
                                     hint="set KUBECONFIG (e.g. `make testbed-env`) or pass --kubeconfig") from None
        self.client = client
        self.deadline = deadline
        cfg = client.Configuration.get_default_copy()
        # no urllib3 retries (rest.py:155-156; its default is 3 per request, which multiplies every timeout
        # by 4): the waits retry themselves, with backoff and within their deadline
        cfg.retries = 0
        self.api = client.ApiClient(cfg)
        self.server = str(self.api.configuration.host)
        self.api.call_api = self._guard(self.api.call_api)  # type: ignore[method-assign]
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)
        self.version = client.VersionApi(self.api)

    def unreachable(self, reason: str, request: str = "") -> ApiUnreachable:
        """The one error for "the API server does not answer" (exit 1); names the command's wait, if any."""
        msg = f"the Kubernetes API server {self.server} (kubeconfig: {self.kubeconfig}) does not answer: {reason}"
        if request:
            msg += f" ({request})"
        short = msg
        if self.deadline is not None:
            d = self.deadline
            msg += f"; was waiting for {d.what} (deadline {d.seconds:g} s); last state seen: {d.last or 'none yet'}"
        return ApiUnreachable(
            msg, hint="check KUBECONFIG and its current context (`kubectl config current-context`); for the local "
                      "testbed start it with `make testbed-up`, then `eval \"$(make -s testbed-env)\"`", short=short)

    def request_timeout(self, read: float = READ_TIMEOUT_S) -> tuple[float, float]:
        """(connect, read) seconds for the next request: the defaults, cut to what is left of the deadline
        (at least 1 s, so a last diagnostic read after the deadline still gets an answer or a clean error)."""
        left = self.deadline.left() if self.deadline is not None else float("inf")
        return min(CONNECT_TIMEOUT_S, max(1.0, left)), min(read, max(1.0, left))

    @contextmanager
    def grace(self, seconds: float = 3.0) -> Iterator[None]:
        """Requests inside get ``seconds`` of their own (the diagnostics read once the deadline has passed)."""
        saved = self.deadline
        if saved is not None:
            g = Deadline(seconds, saved.what)
            g.last, g.last_error, g.seconds = saved.last, saved.last_error, saved.seconds
            self.deadline = g
        try:
            yield
        finally:
            self.deadline = saved

    def _guard(self, call: Callable[..., Any]) -> Callable[..., Any]:
        import urllib3.exceptions
        from kubernetes.client.exceptions import ApiException

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.deadline is not None and self.deadline.expired():
                raise self.deadline.failure()
            if kwargs.get("_request_timeout") is None:
                kwargs["_request_timeout"] = self.request_timeout()
            request = f"{args[0]} {_url_path(str(args[1]))}" if len(args) >= 2 else ""
            try:
                return call(*args, **kwargs)
            except urllib3.exceptions.HTTPError as e:
                raise self.unreachable(_conn_reason(e), request) from None
            except ApiException as e:
                if e.status == 0:  # the client's own mapping of a TLS error: no HTTP answer at all
                    raise self.unreachable(str(e.reason or "TLS error"), request) from None
                raise

        return guarded

    def ping(self) -> str:
        """The server's Kubernetes version; RuntimeFailure (exit 1) when it does not answer or refuses."""
        from kubernetes.client.exceptions import ApiException

        try:
            return str(self.version.get_code().git_version)
        except ApiException as e:
            raise RuntimeFailure(f"the Kubernetes API server {self.server} refused the request: {e.status} {e.reason}",
                                 hint=f"check the credentials of the current context in {self.kubeconfig}") from None

    # ------------------------------------------------------------------------------------- reads
    def get_lws(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            # the generic custom-object API is typed ``object``; it returns the object's JSON as a dict
            return cast("dict[str, Any]", self.custom.get_namespaced_custom_object(
                LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def pods(self, namespace: str, release: str | Names) -> list[Any]:
        return self.core.list_namespaced_pod(namespace, label_selector=pod_selector(release)).items

    def warning_events(self, namespace: str, names: set[str]) -> list[dict[str, str]]:
        """Warning events of the given pods (newest last)."""
        evs = self.core.list_namespaced_event(namespace, field_selector="type=Warning").items
        out = [{"object": e.involved_object.name, "reason": e.reason or "", "message": (e.message or "").strip()}
               for e in sorted(evs, key=_event_time)
               if e.involved_object and e.involved_object.name in names]
        return out


# ------------------------------------------------------------------------------------------ preflight


def _tolerates(tolerations: list[dict[str, Any]], taint: Any) -> bool:
    for t in tolerations:
        key, op = t.get("key"), t.get("operator", "Equal")
        if t.get("effect") and t["effect"] != taint.effect:
            continue
        if op == "Exists" and (not key or key == taint.key):
            return True
        if op == "Equal" and key == taint.key and (t.get("value") or "") == (taint.value or ""):
            return True
    return False


def _url_path(url: str) -> str:
    """The path of a request URL without the query (which carries selectors, not what is asked)."""
    from urllib.parse import urlsplit

    return urlsplit(url).path or url


def _conn_reason(e: Exception) -> str:
    """A short reason for a urllib3 failure ("Connection refused", "timed out", ...), not its object reprs."""
    r = getattr(e, "reason", None) or e
    text = str(r)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip()
    if "timed out" in text or "Timeout" in type(r).__name__:
        return "timed out"
    text = re.sub(r"<[^>]*>:?\s*", "", text).strip(" ()'\"")
    return f"{type(r).__name__}: {text}" if text else type(r).__name__


def _qty(v: str | None) -> float:
    from kubernetes.utils.quantity import parse_quantity

    return float(parse_quantity(v)) if v else 0.0


GPU = "nvidia.com/gpu"


def _pod_gpus(p: Any) -> float:
    """nvidia.com/gpu a pod holds on its node: containers' sum vs the largest init container (requests,
    else limits: an extended resource's request defaults to its limit)."""
    def one(c: Any) -> float:
        r = c.resources
        reqs, lims = ((r.requests or {}), (r.limits or {})) if r else ({}, {})
        return _qty(reqs.get(GPU) or lims.get(GPU))

    spec = p.spec
    main = sum(one(c) for c in spec.containers or [])
    init = max((one(c) for c in spec.init_containers or []), default=0.0)
    return max(main, init)


@dataclass
class GpuHolder:
    pod: str  # namespace/name
    release: str  # app.kubernetes.io/instance, "" if none
    gpus: float

    def __str__(self) -> str:
        return f"{self.pod} ({self.gpus:g}" + (f", release {self.release})" if self.release else ")")


def gpu_holders(kube: Kube, nodes: set[str], skip: tuple[str, str] | None = None
                ) -> tuple[dict[str, list[GpuHolder]], str]:
    """Per node of ``nodes``: the non-terminated pods bound there that request nvidia.com/gpu, pods of
    release ``skip=(namespace, release)`` left out. The second value is why it could not be checked
    ("" when it was): listing pods cluster-wide may be forbidden."""
    from kubernetes.client.exceptions import ApiException

    try:
        pods = kube.core.list_pod_for_all_namespaces(
            field_selector="status.phase!=Succeeded,status.phase!=Failed").items
    except ApiException as e:
        if e.status in (401, 403):
            return {}, f"cannot list pods in all namespaces ({e.status} {e.reason})"
        raise
    out: dict[str, list[GpuHolder]] = {}
    for p in pods:
        node, meta = (p.spec.node_name if p.spec else None), p.metadata
        if node not in nodes or meta is None:
            continue
        rel = (meta.labels or {}).get("app.kubernetes.io/instance") or ""
        if skip and (meta.namespace, rel) == skip:
            continue
        g = _pod_gpus(p)
        if g > 0:
            out.setdefault(node, []).append(GpuHolder(f"{meta.namespace}/{meta.name}", rel, g))
    return out, ""


def values_pod_security(values: dict[str, Any]) -> tuple[str, list[str]]:
    """:func:`dsv3ctl.core.deploy_rules.pod_security_level` of rendered chart values."""
    from dsv3ctl.core.deploy_rules import pod_security_level

    d = values["deploy"]
    return pod_security_level(rdma=bool(values["launch"]["rdma"]), storage_kind=d["storage"]["kind"],
                              host_network=bool(d["host_network"]), host_ipc=bool(d["host_ipc"]),
                              extra_volumes=list(d["extra_volumes"]))


def preflight(kube: Kube, values: dict[str, Any], namespace: str, *, create_namespace: bool = False) -> list[Check]:
    """Everything ``deploy`` checks through the API before touching the cluster.

    ``values`` are the chart values (:func:`dsv3ctl.render.values.render_values`). Returns the checks;
    the caller fails on any ``ok=False`` with severity error. Raises RuntimeFailure when the API does
    not answer at all.
    """
    from kubernetes.client.exceptions import ApiException

    checks: list[Check] = []
    v = kube.ping()  # RuntimeFailure (exit 1), not a failed check, when the API does not answer
    checks.append(Check("cluster", True, f"API server {kube.server} answers: Kubernetes {v}", "info"))
    try:
        crd = kube.ext.read_custom_resource_definition(LWS_CRD)
        served = [x.name for x in crd.spec.versions if x.served]
        ok = LWS_VERSION in served
        checks.append(Check("lws_crd", ok, f"LeaderWorkerSet CRD installed (served: {', '.join(served)})" if ok else
                            f"the LeaderWorkerSet CRD serves {served}, not {LWS_VERSION}; install LWS v0.9.0: {LWS_INSTALL}"))
    except ApiException as e:
        if e.status != 404:
            raise
        checks.append(Check("lws_crd", False, f"the LeaderWorkerSet CRD ({LWS_CRD}) is not installed; install LWS "
                                              f"v0.9.0 (controller + CRD + webhooks): {LWS_INSTALL}"))
    d, par = values["deploy"], values["parallelism"]
    need_nodes = int(par["nodes"]) * int(d["replicas"])
    gpus = int(par["gpus_per_node"])
    sel = dict(d["node_selector"])
    if d.get("gpu_product_label"):
        sel["nvidia.com/gpu.product"] = d["gpu_product_label"]
    rdma = d["rdma"]
    fit, reasons = [], {}
    nodes = kube.core.list_node().items
    for n in nodes:
        name, labels = _name(n), (n.metadata.labels if n.metadata else None) or {}
        alloc = (n.status.allocatable if n.status else None) or {}
        why = []
        if n.spec and n.spec.unschedulable:
            why.append("cordoned")
        miss = [f"{k}={val}" for k, val in sel.items() if labels.get(k) != val]
        if miss:
            why.append("label " + ", ".join(miss) + " missing")
        if _qty(alloc.get("nvidia.com/gpu")) < gpus:
            why.append(f"nvidia.com/gpu {alloc.get('nvidia.com/gpu', 0)} < {gpus}")
        if rdma["enabled"] and rdma["resource"] and _qty(alloc.get(rdma["resource"])) < int(rdma["count"]):
            why.append(f"{rdma['resource']} {alloc.get(rdma['resource'], 0)} < {rdma['count']}")
        bad = [t for t in ((n.spec.taints if n.spec else None) or []) if t.effect in ("NoSchedule", "NoExecute")
               and not _tolerates(d["tolerations"], t)]
        if bad:
            why.append("untolerated taint " + ", ".join(f"{t.key}:{t.effect}" for t in bad))
        if why:
            reasons[name] = "; ".join(why)
        else:
            fit.append(name)
    want = f"{gpus} allocatable nvidia.com/gpu" + (f" and {rdma['count']} {rdma['resource']}"
                                                    if rdma["enabled"] and rdma["resource"] else "")
    if sel:
        want += " with labels " + ", ".join(f"{k}={val}" for k, val in sel.items())
    # free = allocatable minus what bound, non-terminated pods request (the scheduler's arithmetic); pods of
    # this release do not count: an upgrade replaces them
    alloc_of = {_name(n): _qty(((n.status.allocatable if n.status else None) or {}).get(GPU)) for n in nodes}
    holders, unchecked = gpu_holders(kube, set(fit), skip=(namespace, str(d["release"])))
    free = {n: alloc_of[n] - sum(h.gpus for h in holders.get(n, [])) for n in fit}
    free_fit = [n for n in fit if free[n] >= gpus]
    ok = len(free_fit) >= need_nodes
    msg = (f"{len(free_fit)} node(s) with >= {gpus} free {GPU} (of {len(fit)} with {want}); need {need_nodes} "
           f"({par['nodes']} per group x {d['replicas']} group(s), one pod per node)")
    if unchecked:
        msg += f" (free GPUs not checked: {unchecked})"
    if not ok:
        held = [n for n in fit if n not in free_fit]
        if len(fit) < need_nodes:
            detail = "; ".join(f"{k}: {r}" for k, r in list(reasons.items())[:6])
            msg += f". Fit: {', '.join(fit) or 'none'}. Others: {detail or 'no other nodes'}"
        if held:
            msg += ". GPUs held: " + "; ".join(
                f"{n} ({free[n]:g} of {alloc_of[n]:g} free) by " + ", ".join(map(str, holders[n])) for n in held)
        label = d.get("gpu_product_label") or ""
        others = {_name(n): ((n.metadata.labels if n.metadata else None) or {}).get("nvidia.com/gpu.product", "")
                  for n in nodes if _qty(((n.status.allocatable if n.status else None) or {}).get(GPU)) >= gpus}
        wrong = {n: lab for n, lab in others.items() if label and lab != label}
        if len(fit) < need_nodes and wrong:
            seen = ", ".join(f"{n}: {lab or '(no label)'}" for n, lab in list(wrong.items())[:6])
            msg += (f". The GPU product label is the cause: hardware.gpu selects nodes labelled "
                    f"nvidia.com/gpu.product={label} (deploy.gpu_product_label; null = from hardware.gpu), and the "
                    f"nodes with {gpus} GPUs carry {seen}. Set hardware.gpu to the nodes' GPU, or "
                    f"deploy.gpu_product_label to their label ('' = do not select by label)")
        elif len(fit) < need_nodes and len(fit) >= int(d["replicas"]):
            msg += (f". Use parallelism.nodes <= {len(fit) // max(1, int(d['replicas']))} (with tp x pp adjusted) "
                    "or add nodes")
        elif len(fit) < need_nodes:
            msg += ". Add nodes that satisfy the reasons above"
        else:
            rels = sorted({(h.pod.split("/")[0], h.release) for n in held for h in holders[n] if h.release})
            msg += (". Free them first" + (f" (`dsv3ctl undeploy -n {rels[0][0]} --release {rels[0][1]}` if "
                                           "that is a dsv3 release)" if rels else "")
                    + ", or deploy with --skip-preflight: the pods then stay Pending until GPUs are free")
    checks.append(Check("gpu_nodes", ok, msg))
    from dsv3ctl.core.deploy_rules import PSA_ENFORCE_LABEL, stricter

    level, why = values_pod_security(values)
    try:
        ns_obj = kube.core.read_namespace(namespace)
        checks.append(Check("namespace", True, f"namespace {namespace} exists", "info"))
        ns_exists = True
        enforce = ((ns_obj.metadata.labels if ns_obj.metadata else None) or {}).get(PSA_ENFORCE_LABEL)
        if enforce and stricter(enforce, level):
            checks.append(Check("pod_security", False, f"namespace {namespace} enforces Pod Security level {enforce} "
                                f"({PSA_ENFORCE_LABEL}), but the pods need {level}: {'; '.join(why)}; label it "
                                f"`kubectl label namespace {namespace} {PSA_ENFORCE_LABEL}={level} --overwrite`, or "
                                "change the spec keys named"))
        else:
            checks.append(Check("pod_security", True, f"namespace {namespace} "
                                + (f"enforces {enforce}" if enforce else "has no enforce label (the cluster's "
                                   "default level applies)") + f"; the pods need {level}", "info"))
    except ApiException as e:
        if e.status != 404:
            raise
        ns_exists = False
        checks.append(Check("namespace", create_namespace,
                            f"namespace {namespace} will be created with {PSA_ENFORCE_LABEL}={level}" if create_namespace
                            else f"namespace {namespace} does not exist; pass --create-namespace or "
                                 f"`kubectl create namespace {namespace}`", "info" if create_namespace else "error"))

    def secret_check(name: str, key: str, what: str, field_: str) -> None:
        if not name:
            return
        try:
            s = kube.core.read_namespaced_secret(name, namespace) if ns_exists else None
            ok = bool(s and s.data and key in s.data)
            checks.append(Check(field_, ok, f"{what} Secret {name} has key {key}" if ok else
                                f"{what} Secret {namespace}/{name} has no key {key}; recreate it with "
                                f"`kubectl -n {namespace} create secret generic {name} --from-literal={key}=...`"))
        except ApiException as e:
            if e.status != 404:
                raise
            checks.append(Check(field_, False, f"deploy.{field_}={name}: Secret {namespace}/{name} does not exist; "
                                               f"create it (key {key}) or set deploy.{field_} to ''"))

    secret_check(d["hf_token_secret"], "HF_TOKEN", "Hugging Face token", "hf_token_secret")
    secret_check(d["ssh_secret"], "ssh-privatekey", "SSH key", "ssh_secret")
    st = d["storage"]
    if st["kind"] == "existingClaim":
        try:
            pvc = kube.core.read_namespaced_persistent_volume_claim(st["claim_name"], namespace) if ns_exists else None
            if pvc is None:
                raise ApiException(status=404)
            phase = pvc.status.phase if pvc.status else None
            checks.append(Check("storage", True, f"PVC {st['claim_name']} exists ({phase})",
                                "info" if phase == "Bound" else "warning"))
        except ApiException as e:
            if e.status != 404:
                raise
            checks.append(Check("storage", False, f"deploy.storage.claim_name={st['claim_name']}: PVC "
                                                  f"{namespace}/{st['claim_name']} does not exist; create it or use "
                                                  "deploy.storage.kind=newClaim"))
    elif st["kind"] == "newClaim" and st["storage_class"]:
        try:
            kube.client.StorageV1Api(kube.api).read_storage_class(st["storage_class"])
            checks.append(Check("storage", True, f"StorageClass {st['storage_class']} exists", "info"))
        except ApiException as e:
            if e.status != 404:
                raise
            checks.append(Check("storage", False, f"deploy.storage.storage_class={st['storage_class']} does not "
                                                  "exist; use an existing StorageClass or '' for the default"))
    elif st["kind"] == "hostPath":
        checks.append(Check("storage", True, f"hostPath {st['host_path']} on each node (not checkable through "
                                             "the API; created empty if missing)", "info"))
    return checks


# ------------------------------------------------------------------------------------------ status


@dataclass
class PodInfo:
    name: str
    group: int
    role: str
    worker_index: int
    phase: str
    ready: bool
    restarts: int
    node: str
    reason: str = ""
    terminating: bool = False
    uid: str = ""  # a pod recreated under the same name (an upgrade) has a new uid


def pod_info(p: Any) -> PodInfo:
    labels = p.metadata.labels or {}
    st = p.status
    ready = any(c.type == "Ready" and c.status == "True" for c in (st.conditions or []))
    reason = ""
    for c in st.conditions or []:
        if c.type == "PodScheduled" and c.status == "False":
            reason = f"{c.reason}: {c.message}"
    for cs in st.container_statuses or []:
        if cs.state and cs.state.waiting and cs.state.waiting.reason not in (None, "ContainerCreating"):
            reason = f"{cs.state.waiting.reason}: {cs.state.waiting.message or ''}".strip()
    wi = int(labels.get(L_WORKER, "0") or 0)
    return PodInfo(
        name=p.metadata.name, group=int(labels.get(L_GROUP, "0") or 0),
        role="leader" if wi == 0 else "worker", worker_index=wi, phase=st.phase or "Unknown", ready=ready,
        restarts=sum(cs.restart_count for cs in (st.container_statuses or [])), node=p.spec.node_name or "",
        reason=reason, terminating=p.metadata.deletion_timestamp is not None, uid=str(p.metadata.uid or ""),
    )


def pod_seen(p: Any) -> PodSeen:
    """The crash-loop fields of a pod object (:class:`dsv3ctl.core.deploy_watch.PodSeen`): UID, group, template
    revision, and each container (init containers too) that restarted or terminated, with the exit code and
    reason of its last termination (``lastState.terminated``, else ``state.terminated``; Kubernetes API
    reference, ContainerStatus)."""
    from dsv3ctl.core.deploy_watch import ContainerExit, PodSeen

    meta, st = p.metadata, p.status
    labels = (meta.labels if meta else None) or {}
    out = []
    for cs in [*((st.init_container_statuses if st else None) or []), *((st.container_statuses if st else None) or [])]:
        term = (cs.last_state.terminated if cs.last_state else None) or (cs.state.terminated if cs.state else None)
        if not cs.restart_count and term is None:
            continue
        if term is not None and not cs.restart_count and term.exit_code == 0:
            continue  # a finished init container
        out.append(ContainerExit(cs.name, int(cs.restart_count or 0), term.exit_code if term else None,
                                 (term.reason or "") if term else "", (term.message or "") if term else ""))
    return PodSeen(name=str(meta.name), uid=str(meta.uid or ""), group=int(labels.get(L_GROUP, "0") or 0),
                   revision=labels.get(L_REVISION, ""), node=(p.spec.node_name if p.spec else None) or "",
                   deleting=meta.deletion_timestamp is not None, containers=tuple(out))


def previous_log(kube: Kube, namespace: str, pod: str, container: str,
                 lines: int = 20, timeout_s: float = 5.0) -> tuple[list[str] | None, str]:
    """The last ``lines`` lines of the previous (failed) run of ``container`` (PodLogOptions ``previous``,
    ``tailLines``), read at once with its own ``timeout_s``: (lines, "") or (None, why not), e.g. the pod is
    gone or the API server cannot reach the node's kubelet (the kwok testbed has none)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    saved, kube.deadline = kube.deadline, Deadline(timeout_s, f"the log of pod {namespace}/{pod}")
    try:
        text = kube.core.read_namespaced_pod_log(pod, namespace, container=container, previous=True,
                                                 tail_lines=lines, _request_timeout=kube.request_timeout(timeout_s))
        return str(text).splitlines(), ""
    except ApiException as e:
        return None, _log_why(e)
    except (RuntimeFailure, HTTPError, OSError) as e:
        return None, f"the API server did not answer the log request ({getattr(e, 'message', None) or e})"
    finally:
        kube.deadline = saved


def _body_message(e: Any) -> str:
    """The ``message`` of the API server's Status body of an error, "" when it has none (never raw JSON)."""
    import json

    body = getattr(e, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            return str(json.loads(body).get("message") or "")
        except (ValueError, AttributeError):
            return ""
    return ""


#: what the API server's message says when it could not reach the kubelet that serves a pod's log
_KUBELET_UNREACHABLE = ("containerLogs", ":10250", "dial tcp", "no such host", "connection refused")


def _log_why(e: Any) -> str:
    """Why a log read failed, in words: the Status message of the API server's answer."""
    msg = _body_message(e) or f"{e.status} {e.reason}"
    if e.status == 404:
        return f"the pod was already deleted ({msg})"
    if any(x in msg for x in _KUBELET_UNREACHABLE):
        return f"the kubelet of the pod's node cannot serve logs to the API server ({msg})"
    return msg


def pod_events(kube: Kube, namespace: str, pods: dict[str, str], reasons: tuple[str, ...]) -> dict[str, list[dict[str, str]]]:
    """Events with one of ``reasons`` on the pods ``pods`` (name -> UID; an event that names another UID is
    about an earlier pod of that name), oldest first, per pod name. core/v1 events, which also shows those
    written through events.k8s.io/v1 (``regarding`` as ``involvedObject``); the field selector
    ``involvedObject.kind`` is one the API server accepts for Events (kubernetes/kubernetes
    pkg/apis/core/v1/conversion.go, AddFieldLabelConversionsForEvent)."""
    evs = kube.core.list_namespaced_event(namespace, field_selector="involvedObject.kind=Pod").items
    out: dict[str, list[dict[str, str]]] = {}
    for e in sorted(evs, key=_event_time):
        o = e.involved_object
        if not o or o.name not in pods or (e.reason or "") not in reasons:
            continue
        if o.uid and pods[o.name] and o.uid != pods[o.name]:
            continue
        out.setdefault(o.name, []).append({"reason": e.reason or "", "message": (e.message or "").strip()})
    return out


def lws_events(kube: Kube, namespace: str, lws: str, reason: str) -> list[dict[str, str]]:
    """Events with ``reason`` on LeaderWorkerSet ``lws``, oldest first ([] when the read fails)."""
    from kubernetes.client.exceptions import ApiException

    try:
        evs = kube.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=LeaderWorkerSet,involvedObject.name={lws}").items
    except (RuntimeFailure, ApiException):
        return []
    return [{"reason": e.reason or "", "message": (e.message or "").strip()}
            for e in sorted(evs, key=_event_time) if (e.reason or "") == reason]


def leader_fabric_result(kube: Kube, namespace: str, leaders: list[PodInfo]) -> dict[str, Any] | None:
    """The last fabric check summary the leader logged (dsv3ctl.adapters.fabric.status_line), from the first MiB of
    its ``dsv3`` container log (the check runs before the server, so its line is near the start); None when the
    pod has no readable log (not started; the kwok testbed runs no containers) or no check ran."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from dsv3ctl.adapters.fabric import status_from_log

    for p in leaders:
        if p.phase not in ("Running", "Succeeded", "Failed"):
            continue
        try:
            text = kube.core.read_namespaced_pod_log(p.name, namespace, container="dsv3", limit_bytes=1 << 20,
                                                     _request_timeout=10)
        except (ApiException, HTTPError, OSError, ValueError):
            return None
        return status_from_log(text if isinstance(text, str) else str(text))
    return None


def status(kube: Kube, namespace: str, release: str | Names, *, fabric: bool = False,
           on_pod: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Groups, pods (ready, restarts, node), the LWS counters and the endpoints of a release; with ``fabric`` each
    group also gets ``fabric``: its leader's last fabric check summary (:func:`leader_fabric_result`, reads logs).
    ``on_pod`` gets every pod object listed (the wait's crash-loop history)."""
    name = fullname(release)
    rel = names(release).release
    lws = kube.get_lws(namespace, name)
    raw = kube.pods(namespace, release)
    if on_pod:
        for p in raw:
            on_pod(p)
    pods = sorted((pod_info(p) for p in raw), key=lambda x: (x.group, x.worker_index))
    size = int(lws["spec"]["leaderWorkerTemplate"].get("size", 1)) if lws else 0
    replicas = int(lws["spec"].get("replicas", 1)) if lws else 0
    groups = []
    for g in range(replicas):
        gp = [p for p in pods if p.group == g and not p.terminating]
        groups.append({"index": g, "ready": len(gp) == size and all(p.ready for p in gp),
                       "pods": [asdict(p) for p in pods if p.group == g],
                       "fabric": leader_fabric_result(kube, namespace, [p for p in gp if p.role == "leader"])
                       if fabric else None})
    endpoints: dict[str, Any] = {}
    from kubernetes.client.exceptions import ApiException

    try:
        svc = kube.core.read_namespaced_service(f"{name}-api", namespace)
        svc_name, spec = _name(svc), svc.spec
        assert spec is not None, "the API server always returns a Service's spec"
        ports = spec.ports or []
        host = f"{svc_name}.{namespace}.svc"
        endpoints = {"service": svc_name, "cluster_ip": spec.cluster_ip,
                     "ports": {p.name: p.port for p in ports},
                     "urls": {p.name: (f"{host}:{p.port}" if p.name == "grpc" else f"http://{host}:{p.port}")
                              for p in ports}}
    except ApiException as e:
        if e.status != 404:
            raise
    lst = (lws or {}).get("status", {})
    # The LWS controller must have seen the current spec: right after `helm upgrade` the status (ready and
    # updated replicas) still describes the previous template until observedGeneration catches up.
    generation = int((lws or {}).get("metadata", {}).get("generation", 0))
    observed = int(lst.get("observedGeneration", 0))
    return {
        "release": rel, "namespace": namespace, "lws": name, "exists": lws is not None,
        "size": size, "replicas": replicas, "ready_replicas": int(lst.get("readyReplicas", 0)),
        "updated_replicas": int(lst.get("updatedReplicas", 0)),
        "conditions": {c["type"]: c["status"] for c in lst.get("conditions", [])},
        "generation": generation, "observed_generation": observed,
        "ready": lws is not None and bool(groups) and all(g["ready"] for g in groups)
        and int(lst.get("readyReplicas", 0)) == replicas and observed >= generation,
        "groups": groups, "endpoints": endpoints,
        # what the LWS controller did to the groups (pod_controller.go:264 records RecreateGroup), oldest first
        "recreations": lws_events(kube, namespace, name, "RecreateGroup") if lws is not None else [],
    }


# ------------------------------------------------------------------------------------------ wait


@dataclass
class WaitResult:
    ok: bool
    message: str
    events: list[dict[str, str]] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # evidence lines (log tail, LWS events) under the message


def _summary(st: dict[str, Any]) -> str:
    """One line of a release's state for a deadline message: groups ready, each pod's state."""
    if not st["exists"]:
        return f"no LeaderWorkerSet {st['lws']} yet"
    pods = [p for g in st["groups"] for p in g["pods"]]
    each = ", ".join(f"{p['name']} " + ("Terminating" if p["terminating"] else "Ready" if p["ready"] else p["phase"])
                     + (f" ({p['reason']})" if p["reason"] else "") for p in pods)
    return (f"{st['ready_replicas']}/{st['replicas']} group(s) ready, {st['updated_replicas']} updated; "
            f"pods: {each or 'none'}")


def watch_for_change(kube: Kube, namespace: str, label_selector: str, *, block_s: int = WATCH_BLOCK_S,
                     cursor: dict[str, str] | None = None, on_pod: Callable[[Any], None] | None = None) -> str:
    """Block on a pod watch until one event arrives, at most ``block_s``.

    Without ``cursor["rv"]`` the watch starts at the current resourceVersion (a list with limit 1); with it,
    at that resourceVersion, so no pod state between two calls is missed: the event's object goes to
    ``on_pod`` and its resourceVersion into ``cursor["rv"]`` (a caller that keeps ``cursor`` sees every pod
    state in order; the wait needs that, as LWS deletes a restarted pod within seconds).
    Returns ``"event"``, ``"quiet"`` (the stream ended or the read timed out without an event: the caller
    re-reads and watches again), or ``"gone"`` (410 Gone: the resourceVersion expired; ``cursor`` is cleared
    and the caller re-lists after a :class:`Backoff` delay). Raises :class:`ApiUnreachable` when the list itself
    gets no answer. The watch's socket read timeout is ``block_s`` + :data:`CONNECT_TIMEOUT_S`, so a connection
    that stops delivering (a stalled proxy) ends this call instead of hanging it.
    """
    import urllib3.exceptions
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    rv = (cursor or {}).get("rv")
    if not rv:
        lmeta = kube.core.list_namespaced_pod(namespace, label_selector=label_selector, limit=1).metadata
        assert lmeta is not None, "the API server always returns a list's metadata"
        rv = str(lmeta.resource_version)
        if cursor is not None:
            cursor["rv"] = rv
    w = watch.Watch()
    try:
        for ev in w.stream(kube.core.list_namespaced_pod, namespace, label_selector=label_selector,
                           resource_version=rv, timeout_seconds=block_s, allow_watch_bookmarks=False,
                           _request_timeout=kube.request_timeout(read=block_s + CONNECT_TIMEOUT_S)):
            obj = ev.get("object") if isinstance(ev, dict) else None
            meta = getattr(obj, "metadata", None)
            if cursor is not None and meta is not None and meta.resource_version:
                cursor["rv"] = str(meta.resource_version)
            if on_pod and meta is not None and ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                on_pod(obj)
            return "event"
        return "quiet"
    except ApiException as e:
        if e.status == 410:
            if cursor is not None:
                cursor.pop("rv", None)
            return "gone"
        raise
    except urllib3.exceptions.HTTPError:  # read timeout / reset while streaming: reconnect
        return "quiet"
    finally:
        w.stop()


def wait_ready(kube: Kube, namespace: str, release: str | Names, *, timeout_s: float, grace_s: float = 600.0,
               max_recreations: int = 3, waiting_grace_s: float = WAITING_GRACE_S,
               on_change: Callable[[PodInfo], None] | None = None,
               on_note: Callable[[str], None] | None = None) -> WaitResult:
    """Watch the release's pods until every group is Ready (and the LWS is updated), or fail fast.

    Fails (the judging is :mod:`dsv3ctl.core.deploy_watch`) when

    - a group was recreated ``max_recreations`` times (a crash loop under LWS ``RecreateGroupOnPodRestart``):
      every pod state is watched, a restarted container's previous log is read at once (before LWS deletes the
      pod), and the message names the pod, the count, the exit code and reason, with the log tail (or why the
      kubelet could not serve it) and the LWS controller's RecreateGroup events;
    - a pod stays unschedulable for ``grace_s`` seconds and the cluster autoscaler is not adding nodes for it
      (its ``TriggeredScaleUp`` / ``NotTriggerScaleUp`` events on the pod, read every
      :data:`AUTOSCALER_POLL_S`): while it is (TriggeredScaleUp), the wait goes on up to the deadline;
    - a container stays in a waiting state that does not fix itself (image pull, crash loop, config error)
      for ``waiting_grace_s`` seconds.

    The message carries the reason and the pods' Warning events. ``on_change`` gets every pod state change,
    ``on_note`` one line per recreation seen and per autoscaler verdict. One deadline of ``timeout_s`` seconds
    covers every request: reads that time out or a watch that stalls are retried with :class:`Backoff` until it
    passes; then the result names what was waited for and the last state seen.
    """
    deadline = Deadline(timeout_s, f"release {names(release).release} in namespace {namespace} to become Ready")
    saved, kube.deadline = kube.deadline, deadline
    try:
        return _Wait(kube, namespace, release, deadline, grace_s, max_recreations, waiting_grace_s,
                     on_change, on_note).run()
    finally:
        kube.deadline = saved


class _Wait:
    """The state of one :func:`wait_ready`: reads and watches here, judging in :mod:`dsv3ctl.core.deploy_watch`."""

    def __init__(self, kube: Kube, namespace: str, release: str | Names, deadline: Deadline, grace_s: float,
                 max_recreations: int, waiting_grace_s: float, on_change: Callable[[PodInfo], None] | None,
                 on_note: Callable[[str], None] | None) -> None:
        from dsv3ctl.core.deploy_watch import PodHistory

        self.kube, self.ns, self.release, self.deadline = kube, namespace, release, deadline
        self.grace_s, self.max_recreations, self.waiting_grace_s = grace_s, max_recreations, waiting_grace_s
        self.on_change, self.on_note = on_change, on_note
        self.history = PodHistory()
        self.counted: dict[int, int] = {}  # group -> recreations already noted
        self.ca_events: dict[str, list[dict[str, str]]] = {}
        self.ca_read_at = -1e9
        self.ca_said: dict[str, str] = {}

    def note(self, text: str) -> None:
        if self.on_note:
            self.on_note(text)

    def seen(self, obj: Any) -> None:
        """One pod object from a list or the watch: into the history; a new container failure gets its
        previous log read now."""
        from dsv3ctl.core.deploy_watch import LOG_TAIL_LINES

        try:
            p = pod_seen(obj)
        except (AttributeError, TypeError, ValueError):
            return
        for ev in self.history.observe(p):
            e = ev.exit
            self.note(f"pod {ev.pod} (uid {ev.uid[:8]}): container {e.container} restarted "
                      f"(restartCount {e.restart_count}, exit code "
                      f"{e.exit_code if e.exit_code is not None else 'not reported'}"
                      f"{', ' + e.reason if e.reason else ''})")
            lines, why = previous_log(self.kube, self.ns, ev.pod, e.container, lines=LOG_TAIL_LINES)
            self.history.attach_log(ev, lines, why)

    def verdict_crash(self, st: dict[str, Any]) -> WaitResult | None:
        from dsv3ctl.core.deploy_watch import LWS_RECREATE_GROUP, judge_crash_loop

        groups = [g["index"] for g in st["groups"]]
        for g in groups:
            n, who = self.history.recreations(g)
            if n > self.counted.get(g, 0):
                self.counted[g] = n
                self.note(f"group {g} recreated ({n} of deploy.max_recreations={self.max_recreations}; "
                          f"pod {who} has a new UID)")
        pre = judge_crash_loop(self.history, groups, self.max_recreations)
        if pre is None:
            return None
        with self.kube.grace(5.0):
            evs = lws_events(self.kube, self.ns, st["lws"], LWS_RECREATE_GROUP)
        v = judge_crash_loop(self.history, groups, self.max_recreations, evs) or pre
        names = {q["name"] for gg in st["groups"] for q in gg["pods"]}
        return WaitResult(False, v.message, _events(self.kube, self.ns, names), list(v.details))

    def autoscaler(self, stuck: dict[str, str], now: float) -> None:
        """Re-read the cluster autoscaler's events on the unschedulable pods ``stuck`` (name -> uid), at most every
        :data:`AUTOSCALER_POLL_S`."""
        from dsv3ctl.core.deploy_watch import AUTOSCALER_REASONS

        if not stuck or now - self.ca_read_at < AUTOSCALER_POLL_S:
            return
        self.ca_read_at = now
        from kubernetes.client.exceptions import ApiException

        try:
            self.ca_events = pod_events(self.kube, self.ns, stuck, AUTOSCALER_REASONS)
        except ApiUnreachable as e:
            self.deadline.last_error = e.short
        except (ApiException, RuntimeFailure) as e:  # events not readable (forbidden), or the deadline passed
            self.deadline.last_error = f"cannot read the pods' events: {getattr(e, 'message', None) or e}"

    def run(self) -> WaitResult:
        from dsv3ctl.core.deploy_watch import judge_unschedulable

        seen: dict[str, tuple[Any, ...]] = {}
        bad_since: dict[str, float] = {}
        backoff = Backoff()
        cursor: dict[str, str] = {}
        st: dict[str, Any] | None = None
        kube, deadline = self.kube, self.deadline
        while True:
            try:
                st = status(kube, self.ns, self.release, on_pod=self.seen)
            except ApiUnreachable as e:
                deadline.last_error = e.short
                if deadline.expired():
                    break
                backoff.sleep(deadline)
                continue
            except RuntimeFailure:  # the deadline passed between the reads of one status
                break
            deadline.last = _summary(st)
            crash = self.verdict_crash(st)
            if crash is not None:
                return crash
            now = time.monotonic()
            pods = [PodInfo(**p) for g in st["groups"] for p in g["pods"]]
            unsched = {i.name: i.uid for i in pods if not i.terminating and i.reason.startswith("Unschedulable")}
            self.autoscaler(unsched, now)
            for info in pods:
                key = (info.uid, info.phase, info.ready, info.restarts, info.node, info.reason, info.terminating)
                if seen.get(info.name) != key:
                    seen[info.name] = key
                    if self.on_change:
                        self.on_change(info)
                waiting = (not info.terminating) and info.reason.split(":")[0] in BAD_WAITING
                if info.name in unsched or waiting:
                    since = bad_since.setdefault(info.name, now)
                else:
                    bad_since.pop(info.name, None)
                    continue
                names = {q["name"] for gg in st["groups"] for q in gg["pods"]}
                if waiting:
                    if now - since >= self.waiting_grace_s:
                        return WaitResult(False, f"pod {info.name}: {info.reason}", _events(kube, self.ns, names))
                    continue
                j = judge_unschedulable(info.name, info.reason, now - since, self.grace_s,
                                        self.ca_events.get(info.name, []))
                if j.action == "scaling" and self.ca_said.get(info.name) != j.message:
                    self.ca_said[info.name] = j.message
                    self.note(j.message + "; waiting up to the deadline")
                elif j.action == "fail":
                    return WaitResult(False, j.message, _events(kube, self.ns, names))
            if st["ready"] and st["updated_replicas"] == st["replicas"] and all(
                    not p["terminating"] for g in st["groups"] for p in g["pods"]):
                return WaitResult(True, f"{st['replicas']} group(s) x {st['size']} pod(s) Ready")
            if deadline.expired():
                break
            try:
                outcome = watch_for_change(kube, self.ns, pod_selector(self.release), cursor=cursor, on_pod=self.seen,
                                           block_s=max(1, min(WATCH_BLOCK_S, int(deadline.left()) or 1)))
            except ApiUnreachable as e:
                deadline.last_error, outcome = e.short, "error"
            except RuntimeFailure:  # the deadline passed during the watch's list
                break
            if outcome in ("gone", "error"):
                backoff.sleep(deadline)
            else:
                backoff.reset()
        names = {q["name"] for gg in (st or {}).get("groups", []) for q in gg["pods"]}
        not_ready = [q["name"] for gg in (st or {}).get("groups", []) for q in gg["pods"] if not q["ready"]]
        msg = (f"not Ready after {deadline.seconds:g} s (waited for {deadline.what}; not ready: "
               f"{', '.join(not_ready) or 'no pods yet'}; last state seen: {deadline.last or 'none yet'}")
        if deadline.last_error:
            msg += f"; last error: {deadline.last_error}"
        if self.ca_said:
            msg += "; " + "; ".join(self.ca_said.values())
        return WaitResult(False, msg + ")", _events(kube, self.ns, names) if names else [])


def _events(kube: Kube, namespace: str, names: set[str]) -> list[dict[str, str]]:
    """The pods' last 10 Warning events, read with a few seconds of grace; [] when that read fails too."""
    with kube.grace():
        try:
            return kube.warning_events(namespace, names)[-10:]
        except RuntimeFailure:
            return []


def running_shape(kube: Kube, namespace: str, release: str | Names) -> tuple[int, int] | None:
    """(pods per group, groups) of the release's LeaderWorkerSet now, None when there is none."""
    lws = kube.get_lws(namespace, fullname(release))
    if not lws:
        return None
    spec = lws.get("spec", {})
    return int(spec.get("leaderWorkerTemplate", {}).get("size", 1)), int(spec.get("replicas", 1))


def find_pod(kube: Kube, namespace: str, release: str | Names, group: int, worker: int) -> Any | None:
    """The serving pod of worker index ``worker`` (0 = the leader) of group ``group``, not terminating; None when
    there is none."""
    sel = f"{pod_selector(release)},{L_GROUP}={group},{L_WORKER}={worker}"
    pods = [p for p in kube.core.list_namespaced_pod(namespace, label_selector=sel).items
            if not (p.metadata and p.metadata.deletion_timestamp)]
    return pods[0] if pods else None


def write_log(kube: Kube, namespace: str, pod: Any, write: Callable[[str], None], *, container: str,
              follow: bool, tail: int | None, timeout_s: float) -> None:
    """Write the log of container ``container`` of ``pod`` to ``write`` (with ``follow``: :func:`follow_log`).
    A log the API server could not fetch raises :func:`log_error`'s RuntimeFailure; an API server that does not
    answer raises :class:`ApiUnreachable`."""
    name = pod.metadata.name
    try:
        if follow:
            follow_log(kube, namespace, name, write, container=container, tail=tail, timeout_s=timeout_s)
        else:
            kw: dict[str, Any] = {"container": container}
            if tail is not None:
                kw["tail_lines"] = tail
            kube.deadline = Deadline(timeout_s, f"the log of pod {namespace}/{name}")
            write(kube.core.read_namespaced_pod_log(name, namespace, **kw))
    except RuntimeFailure:
        raise  # the API server does not answer (mapped in Kube)
    except Exception as e:  # noqa: BLE001 - ApiException or a closed stream
        raise log_error(kube, pod, e) from None


def log_error(kube: Kube, pod: Any, e: Exception) -> RuntimeFailure:
    """A clean RuntimeFailure for a log the API server could not fetch: the Status message in words, and when
    the kubelet could not be reached, whether the node is a kwok fake node (the testbed, no kubelet) or a real
    node whose kubelet the API server cannot reach on port 10250."""
    ns, name, node = pod.metadata.namespace, pod.metadata.name, pod.spec.node_name or ""
    msg = _body_message(e)
    if not msg:
        reason, status = getattr(e, "reason", None), getattr(e, "status", None)
        msg = f"{status} {reason}" if status and reason else str(reason or e)
    if not any(s in msg for s in _KUBELET_UNREACHABLE):
        return RuntimeFailure(f"cannot read the log of pod {ns}/{name}: {msg}",
                              hint=f"`dsv3ctl status -n {ns}` shows the pod's state")
    fake = False
    try:
        n = kube.core.read_node(node)
        fake = (((n.metadata.annotations if n.metadata else None) or {}).get("kwok.x-k8s.io/node") == "fake")
    except Exception:  # noqa: BLE001 - the hint only
        pass
    detail = msg.split(": ")[-1] if ": " in msg else msg
    if fake:
        return RuntimeFailure(f"pod {ns}/{name} has no log: its node {node} is a kwok fake node (the local testbed), "
                              "which has no kubelet and runs no containers",
                              hint="logs need a real node; on the testbed use `dsv3ctl status` to see the pods")
    return RuntimeFailure(f"cannot read the log of pod {ns}/{name}: the API server cannot reach the kubelet of its "
                          f"node {node or '?'} ({detail})",
                          hint=f"check the node (`kubectl get node {node}`) and that the API server reaches its "
                               "kubelet on port 10250")


def release_claims(kube: Kube, namespace: str, release: str | Names, *, delete: bool) -> list[str]:
    """The release's PVCs, which ``helm uninstall`` keeps (``helm.sh/resource-policy: keep``): with ``delete``
    each is deleted and none is returned, else their names (kept)."""
    from kubernetes.client.exceptions import ApiException

    sel = f"app.kubernetes.io/instance={names(release).release}"
    kept = []
    for p in kube.core.list_namespaced_persistent_volume_claim(namespace, label_selector=sel).items:
        if delete:
            try:
                kube.core.delete_namespaced_persistent_volume_claim(_name(p), namespace)
            except ApiException as e:
                if e.status != 404:  # gone between the list and the delete
                    raise
        else:
            kept.append(_name(p))
    return kept


def wait_gone(kube: Kube, namespace: str, release: str | Names, deadline: Deadline) -> list[str]:
    """Poll :func:`leftovers` until none is left or ``deadline`` passes; returns what is left.

    Reads that time out are retried with :class:`Backoff`; raises ``deadline.failure()`` (naming the
    objects last seen) when no read answered before the deadline.
    """
    backoff = Backoff(base=1.0, cap=4.0)
    left: list[str] | None = None
    while True:
        try:
            left = leftovers(kube, namespace, release)
            deadline.last = ", ".join(left) or "nothing left"
            if not left:
                return left
        except ApiUnreachable as e:
            deadline.last_error = e.short
        except RuntimeFailure:  # the deadline passed between the reads
            pass
        if deadline.expired():
            if left is None:
                raise deadline.failure()
            return left
        backoff.sleep(deadline)


def _ts_key(ts: bytes) -> tuple[str, str]:
    """Sort key of a kubelet log timestamp (RFC 3339 with up to 9 fraction digits, trailing zeros dropped
    as Go's RFC3339Nano writes them): (seconds part, fraction padded to 9 digits)."""
    t = ts.decode("ascii", "replace").rstrip("Z")
    sec, _, frac = t.partition(".")
    return sec, frac.ljust(9, "0")


def follow_log(kube: Kube, namespace: str, name: str, write: Callable[[str], None], *, container: str,
               tail: int | None, timeout_s: float) -> None:
    """Stream the log of container ``container`` of pod ``namespace/name`` to ``write`` until it ends.

    Every (re)connection and every probe has a deadline of ``timeout_s`` seconds. The stream is read with
    ``timestamps=true`` (PodLogOptions.timestamps: each line starts with its RFC 3339 time and a space,
    which is cut off here). When nothing arrives for ``min(READ_TIMEOUT_S, timeout_s)`` seconds or the
    stream ends, the pod is read: gone or container terminated ends the follow; running re-opens the stream
    with ``since_seconds`` covering the gap, lines up to the last timestamp seen dropped. An API server that
    does not answer the probe raises :class:`ApiUnreachable` naming the log it was following.
    """
    import math

    import urllib3.exceptions
    from kubernetes.client.exceptions import ApiException

    what = f"the log of pod {namespace}/{name} (container {container})"
    last: tuple[str, str] | None = None
    last_at = time.monotonic()
    reopen = False
    saved = kube.deadline
    try:
        while True:
            kube.deadline = Deadline(timeout_s, what)
            kw: dict[str, Any] = {"container": container, "follow": True, "timestamps": True,
                                  "_preload_content": False,
                                  "_request_timeout": kube.request_timeout(read=min(READ_TIMEOUT_S, timeout_s))}
            if reopen:
                kw["since_seconds"] = int(math.ceil(time.monotonic() - last_at)) + 2
            elif tail is not None:
                kw["tail_lines"] = tail
            # with _preload_content=False the client returns the urllib3 response, not the typed str
            resp = cast("Any", kube.core.read_namespaced_pod_log(name, namespace, **kw))
            kube.deadline = None  # the stream is open; a follow has no end of its own
            buf = b""
            try:
                for chunk in resp.stream(amt=4096):
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        ts, _, text = line.partition(b" ")
                        key = _ts_key(ts)
                        if last is not None and key <= last:
                            continue
                        last, last_at = key, time.monotonic()
                        write(text.decode("utf-8", "replace") + "\n")
            except (urllib3.exceptions.HTTPError, OSError):
                pass  # silence past the read timeout, or the connection dropped: probe, then re-open
            finally:
                resp.release_conn()
            kube.deadline = Deadline(min(timeout_s, 5.0), what)
            kube.deadline.last = f"last line at {last[0]}Z" if last else "no line yet"
            try:
                pod = kube.core.read_namespaced_pod(name, namespace)
            except ApiException as e:
                if e.status == 404:
                    return
                raise
            cs = [c for c in (pod.status.container_statuses or []) if c.name == container] if pod.status else []
            if (pod.metadata and pod.metadata.deletion_timestamp is not None) or not cs or (cs[0].state and cs[0].state.terminated):
                return
            reopen = True
    finally:
        kube.deadline = saved


def leftovers(kube: Kube, namespace: str, release: str | Names) -> list[str]:
    """Objects of the release still present (kind/name), PVCs kept by policy excluded."""
    sel = f"app.kubernetes.io/instance={names(release).release}"
    out: list[str] = []
    c = kube.core
    for kind, fn in (("pod", c.list_namespaced_pod), ("service", c.list_namespaced_service),
                     ("configmap", c.list_namespaced_config_map), ("secret", c.list_namespaced_secret)):
        out += [f"{kind}/{_name(o)}" for o in fn(namespace, label_selector=sel).items]
    apps = kube.client.AppsV1Api(kube.api)
    out += [f"statefulset/{_name(o)}" for o in apps.list_namespaced_stateful_set(namespace, label_selector=sel).items]
    lsel = f"leaderworkerset.sigs.k8s.io/name={fullname(release)}"
    for kind, fn in (("pod", c.list_namespaced_pod), ("service", c.list_namespaced_service)):
        out += [f"{kind}/{_name(o)}" for o in fn(namespace, label_selector=lsel).items]
    out += [f"statefulset/{_name(o)}" for o in apps.list_namespaced_stateful_set(namespace, label_selector=lsel).items]
    # typed ``object`` by the client; the list's JSON as a dict
    lws = cast("dict[str, Any]", kube.custom.list_namespaced_custom_object(
        LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, label_selector=sel))
    out += [f"leaderworkerset/{o['metadata']['name']}" for o in lws.get("items", [])]
    return sorted(set(out))
