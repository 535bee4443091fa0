"""Judging what ``dsv3ctl deploy --wait`` sees of a release's pods (pure: observations in, verdicts out).

Crash loops. With LWS ``RecreateGroupOnPodRestart`` a container restart never reaches CrashLoopBackOff: the LWS
pod controller deletes the group's leader as soon as any container of a Running/Pending pod of the group has
``restartCount > 0`` (sigs.k8s.io/lws v0.9.0 ``pkg/utils/pod/pod_utils.go:29-45`` ``ContainerRestarted``,
``pkg/controllers/pod_controller.go:204-266`` ``handleRestartPolicy``: foreground delete of the leader, then a
Normal event with reason ``RecreateGroup`` on the LeaderWorkerSet, line 264), and the group comes back as new
pods under the same names with ``restartCount`` 0. So a crash loop shows as pod names whose UID keeps changing
within one template revision (label ``leaderworkerset.sigs.k8s.io/template-revision-hash``, lws v0.9.0
``api/leaderworkerset/v1/leaderworkerset_types.go:63``; a rolling update changes it, a recreation does not).
:class:`PodHistory` records every pod state the adapter saw (UIDs per name, restart counts, the last
terminated state of each container, the log tail read while the pod still existed); :func:`judge_crash_loop`
says when a group has been recreated ``deploy.max_recreations`` times (or, where nothing recreates the group,
a container of one pod has restarted that often) and builds the evidence.

Unschedulable pods. :func:`judge_unschedulable` decides, for a pod unschedulable for some seconds, from the
cluster autoscaler's events on that pod, whether to keep waiting (nodes are being added), or fail, and what to
say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: cluster-autoscaler's Normal event on a pod whose scale-up it started: kubernetes/autoscaler
#: commit 16c271a3078a6f808270c4823207f97db9538437 cluster-autoscaler/processors/status/
#: eventing_scale_up_processor.go:52 (``Recorder.Eventf(pod, EventTypeNormal, "TriggeredScaleUp",
#: "pod triggered scale-up: %v", ...)``)
TRIGGERED_SCALE_UP = "TriggeredScaleUp"
#: cluster-autoscaler's Normal event on a pod it cannot help: same commit and file, line 42
#: (``"NotTriggerScaleUp"``, message ``"pod didn't trigger scale-up: <reasons>"``)
NOT_TRIGGER_SCALE_UP = "NotTriggerScaleUp"
AUTOSCALER_REASONS = (TRIGGERED_SCALE_UP, NOT_TRIGGER_SCALE_UP)
#: the LWS controller's event reason when it deletes a leader to recreate its group: sigs.k8s.io/lws v0.9.0
#: pkg/controllers/pod_controller.go:264 (message "Worker pod X failed, deleted leader pod Y to recreate group N")
LWS_RECREATE_GROUP = "RecreateGroup"
#: how many log lines of the failing container go into the message
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class ContainerExit:
    """A container's last termination as the pod status reports it (``lastState.terminated``, else a
    ``state.terminated``)."""

    container: str
    restart_count: int
    exit_code: int | None
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class PodSeen:
    """One state of one pod: the fields the crash-loop judgement needs."""

    name: str
    uid: str
    group: int
    revision: str  # leaderworkerset.sigs.k8s.io/template-revision-hash
    node: str = ""
    deleting: bool = False
    containers: tuple[ContainerExit, ...] = ()  # every container with a restart or a termination

    @property
    def restarts(self) -> int:
        return max((c.restart_count for c in self.containers), default=0)


@dataclass
class Evidence:
    """What is known of one container failure: the pod (name, UID, node), the exit and the log tail (or why
    the log could not be read)."""

    pod: str
    uid: str
    node: str
    exit: ContainerExit
    log: list[str] | None = None  # None: not read (yet)
    log_error: str = ""


@dataclass
class PodHistory:
    """Every pod state seen during one wait. :meth:`observe` returns the failures new in that state, so the
    caller can read their logs at once (before LWS deletes the pod) and hand them to :meth:`attach_log`."""

    uids: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # name -> [(uid, revision)] in order
    group_of: dict[str, int] = field(default_factory=dict)
    failures: list[Evidence] = field(default_factory=list)
    _seen_restarts: dict[tuple[str, str], int] = field(default_factory=dict)  # (uid, container) -> count

    def observe(self, p: PodSeen) -> list[Evidence]:
        if not p.uid:
            return []
        seq = self.uids.setdefault(p.name, [])
        if not any(u == p.uid for u, _ in seq):
            seq.append((p.uid, p.revision))
        self.group_of[p.name] = p.group
        new = []
        for c in p.containers:
            key = (p.uid, c.container)
            before = self._seen_restarts.get(key, 0)
            if c.restart_count > before:
                self._seen_restarts[key] = c.restart_count
                ev = Evidence(p.name, p.uid, p.node, c)
                self.failures.append(ev)
                new.append(ev)
            elif c.restart_count == before and before > 0:
                # the same restart, now with more detail (exit code filled in by a later status update)
                for ev in self.failures:
                    if (ev.uid, ev.exit.container) == key and ev.exit.restart_count == c.restart_count \
                            and ev.exit.exit_code is None and c.exit_code is not None:
                        ev.exit = c
        return new

    def attach_log(self, ev: Evidence, lines: list[str] | None, error: str = "") -> None:
        ev.log, ev.log_error = (lines[-LOG_TAIL_LINES:] if lines is not None else None), error

    def recreations(self, group: int) -> tuple[int, str]:
        """(times the group was recreated, the pod name that shows it): the most UID changes of one pod name of
        the group within one template revision."""
        best, who = 0, ""
        for name, seq in self.uids.items():
            if self.group_of.get(name) != group:
                continue
            n = sum(1 for (_, r0), (_, r1) in zip(seq, seq[1:], strict=False) if r0 == r1)
            if n > best:
                best, who = n, name
        return best, who


@dataclass(frozen=True)
class Verdict:
    """A wait that must end: ``message`` is the one-line cause, ``details`` the evidence lines."""

    message: str
    details: tuple[str, ...] = ()


def _exit_text(e: ContainerExit) -> str:
    code = f"exit code {e.exit_code}" if e.exit_code is not None else "exit code not reported"
    why = ", ".join(x for x in (e.reason, e.message.strip().splitlines()[-1] if e.message.strip() else "") if x)
    return code + (f" ({why})" if why else "")


def judge_crash_loop(history: PodHistory, groups: list[int], max_recreations: int,
                     lws_events: list[dict[str, str]] | None = None) -> Verdict | None:
    """A :class:`Verdict` when a group of ``groups`` was recreated ``max_recreations`` times, or one container of
    one pod restarted that often (no recreation, e.g. ``RecreateGroupAfterStart`` while a pod is pending);
    None while neither happened.

    The message names the group, the pod whose UID changed, the count, and the last failing container with its
    exit code and reason; the details carry its last log lines (or why the kubelet could not serve them) and
    the LWS controller's ``RecreateGroup`` events (``lws_events``: dicts with ``reason`` and ``message``, oldest
    first) of that group.
    """
    for g in groups:
        n, who = history.recreations(g)
        fails = [f for f in history.failures if history.group_of.get(f.pod) == g]
        in_place = max((f.exit.restart_count for f in fails), default=0)
        if n < max_recreations and in_place < max_recreations:
            continue
        if n >= max_recreations:
            msg = (f"group {g} was recreated {n} time(s) (pod {who} got a new UID each time; "
                   f"deploy.max_recreations={max_recreations}): a crash loop")
        else:
            last = max(fails, key=lambda f: f.exit.restart_count)
            msg = (f"container {last.exit.container} of pod {last.pod} restarted {in_place} time(s) "
                   f"(deploy.max_recreations={max_recreations}): a crash loop")
        details: list[str] = []
        if fails:
            f = fails[-1]
            msg += f"; last failure: container {f.exit.container} of pod {f.pod} {_exit_text(f.exit)}"
            where = f" on node {f.node}" if f.node else ""
            if f.log:
                details.append(f"last {len(f.log)} log line(s) of container {f.exit.container} of pod "
                               f"{f.pod}{where} (the run that failed):")
                details += [f"  {line}" for line in f.log]
            elif f.log is not None:
                details.append(f"the log of the failed run of container {f.exit.container} of pod {f.pod} is empty")
            else:
                details.append(f"no log of container {f.exit.container} of pod {f.pod}{where}: "
                               f"{f.log_error or 'it was not read before the pod was deleted'}")
        else:
            msg += ("; no container restart or exit was seen (the pods were deleted: by hand, by an eviction or "
                    "by a node failure?)")
        mine = [e for e in lws_events or [] if e.get("reason") == LWS_RECREATE_GROUP
                and e.get("message", "").endswith(f"to recreate group {g}")]
        if mine:
            details.append(f"LWS controller: {len(mine)} {LWS_RECREATE_GROUP} event(s), last: {mine[-1]['message']}")
        return Verdict(msg, tuple(details))
    return None


@dataclass(frozen=True)
class Scheduling:
    """What to do with a pod that is unschedulable: ``action`` is ``wait`` (within the grace), ``scaling``
    (a cluster autoscaler is adding nodes: wait up to the overall deadline) or ``fail``; ``message`` says why."""

    action: str
    message: str


def judge_unschedulable(pod: str, reason: str, stuck_s: float, grace_s: float,
                        autoscaler_events: list[dict[str, str]]) -> Scheduling:
    """Judge pod ``pod``, unschedulable for ``stuck_s`` seconds with the scheduler's ``reason``.

    ``autoscaler_events`` are the pod's events with a cluster-autoscaler reason (:data:`TRIGGERED_SCALE_UP`,
    :data:`NOT_TRIGGER_SCALE_UP`), oldest first (dicts with ``reason`` and ``message``). The newest decides:
    TriggeredScaleUp -> ``scaling`` (even past the grace); otherwise ``wait`` within ``grace_s``, then ``fail``
    with what the autoscaler said, or that no autoscaler reported on the pod.
    """
    ca = [e for e in autoscaler_events if e.get("reason") in AUTOSCALER_REASONS]
    last = ca[-1] if ca else None
    if last and last["reason"] == TRIGGERED_SCALE_UP:
        return Scheduling("scaling", f"pod {pod} is unschedulable; a cluster autoscaler is adding nodes for it "
                                     f"({TRIGGERED_SCALE_UP}: {last.get('message', '')})")
    if stuck_s < grace_s:
        return Scheduling("wait", f"pod {pod} is unschedulable for {stuck_s:.0f} s (grace {grace_s:g} s)")
    base = f"pod {pod} unschedulable for {stuck_s:.0f} s (grace {grace_s:g} s, deploy.unschedulable_grace_s or --grace): {reason}"
    if last:
        return Scheduling("fail", f"{base}; the cluster autoscaler is not adding nodes for it "
                                  f"({NOT_TRIGGER_SCALE_UP}: {last.get('message', '')})")
    return Scheduling("fail", f"{base}; no cluster autoscaler reported on the pod ({TRIGGERED_SCALE_UP} / "
                              f"{NOT_TRIGGER_SCALE_UP} events: none), so no nodes are being added")
