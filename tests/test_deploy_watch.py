"""The judging of `deploy --wait` (dsv3ctl.core.deploy_watch, pure): group recreations within one template
revision count toward deploy.max_recreations and a rolling update does not; the evidence names the pod, the
count, the exit code and reason and the log tail or why there is none; an unschedulable pod waits while the
cluster autoscaler adds nodes and fails with what it said otherwise. Also the pod-object reading of the kube
adapter (pod_seen) and the spec keys' validation."""

from __future__ import annotations

import pytest
from kubernetes import client

from dsv3ctl.core import deploy_watch as w


def seen(name: str, uid: str, restarts: int = 0, *, group: int = 0, rev: str = "r1", code: int | None = 1,
         reason: str = "Error") -> w.PodSeen:
    cs = (w.ContainerExit("dsv3", restarts, code, reason, "boom"),) if restarts else ()
    return w.PodSeen(name=name, uid=uid, group=group, revision=rev, node="gpu-0", containers=cs)


def crash_cycles(h: w.PodHistory, n: int, *, rev: str = "r1") -> None:
    """n LWS recreations: each incarnation's worker restarts once, then leader and worker come back with new UIDs."""
    for i in range(n + 1):
        h.observe(seen("d-0", f"L{i}", rev=rev))
        h.observe(seen("d-0-1", f"W{i}", rev=rev))
        if i < n:
            for ev in h.observe(seen("d-0-1", f"W{i}", 1, code=137, reason="OOMKilled", rev=rev)):
                h.attach_log(ev, [f"line {j}" for j in range(30)] + [f"incarnation {i}"])


def test_recreations_count_up_to_the_limit():
    h = w.PodHistory()
    crash_cycles(h, 2)
    assert h.recreations(0) == (2, "d-0")
    assert w.judge_crash_loop(h, [0], 3) is None
    crash_cycles(h, 3)
    v = w.judge_crash_loop(h, [0], 3)
    assert v is not None
    assert v.message.startswith("group 0 was recreated 3 time(s) (pod d-0 got a new UID each time; "
                                "deploy.max_recreations=3)"), v.message
    assert "last failure: container dsv3 of pod d-0-1 exit code 137 (OOMKilled, boom)" in v.message
    # the last LOG_TAIL_LINES lines of the run that failed last
    assert v.details[0].startswith(f"last {w.LOG_TAIL_LINES} log line(s) of container dsv3 of pod d-0-1 on node gpu-0")
    assert v.details[-1] == "  incarnation 2" and len(v.details) == 1 + w.LOG_TAIL_LINES


def test_a_rolling_update_is_no_recreation():
    h = w.PodHistory()
    for i, rev in enumerate(["r1", "r2", "r3", "r4"]):  # each upgrade: new revision, new UIDs
        h.observe(seen("d-0", f"L{i}", rev=rev))
    assert h.recreations(0) == (0, "")
    assert w.judge_crash_loop(h, [0], 1) is None
    h.observe(seen("d-0", "L9", rev="r4"))  # the same revision again: a recreation
    assert h.recreations(0)[0] == 1


def test_groups_are_judged_apart_and_the_same_restart_is_counted_once():
    h = w.PodHistory()
    crash_cycles(h, 1)
    for _ in range(5):  # the same state seen again (list and watch): no new failure
        assert h.observe(seen("d-0-1", "W0", 1)) == []
    h.observe(seen("d-1", "M0", group=1))
    assert w.judge_crash_loop(h, [0, 1], 2) is None
    assert w.judge_crash_loop(h, [0, 1], 1) is not None
    assert w.judge_crash_loop(h, [1], 1) is None


def test_restarts_in_place_count_when_nothing_recreates_the_group():
    h = w.PodHistory()
    for r in (1, 2):
        h.observe(seen("d-0", "L0", r, code=2))
    assert w.judge_crash_loop(h, [0], 3) is None
    h.observe(seen("d-0", "L0", 3, code=2))
    v = w.judge_crash_loop(h, [0], 3)
    assert v is not None and "container dsv3 of pod d-0 restarted 3 time(s)" in v.message, v
    assert "exit code 2" in v.message


def test_no_log_says_why_and_lws_events_are_evidence():
    h = w.PodHistory()
    for i in range(2):
        h.observe(seen("d-0", f"L{i}"))
        for ev in h.observe(seen("d-0", f"L{i}", 1, code=None, reason="")):
            h.attach_log(ev, None, "the kubelet of the pod's node cannot serve logs to the API server (dial tcp)")
    events = [{"reason": "RecreateGroup", "message": "Worker pod d-0 failed, deleted leader pod d-0 to recreate group 0"},
              {"reason": "RecreateGroup", "message": "Worker pod x-0 failed, deleted leader pod x-0 to recreate group 1"},
              {"reason": "GroupsProgressing", "message": "Created worker statefulset"}]
    v = w.judge_crash_loop(h, [0], 1, events)
    assert v is not None
    assert "exit code not reported" in v.message
    assert v.details[0] == ("no log of container dsv3 of pod d-0 on node gpu-0: the kubelet of the pod's node "
                            "cannot serve logs to the API server (dial tcp)")
    assert v.details[1] == ("LWS controller: 1 RecreateGroup event(s), last: Worker pod d-0 failed, deleted leader "
                            "pod d-0 to recreate group 0")


def test_recreations_without_any_restart_say_so():
    h = w.PodHistory()
    for i in range(3):
        h.observe(seen("d-0", f"L{i}"))
    v = w.judge_crash_loop(h, [0], 2)
    assert v is not None and "no container restart or exit was seen" in v.message


def test_exit_code_reported_later_fills_in_the_same_failure():
    h = w.PodHistory()
    assert len(h.observe(seen("d-0", "L0", 1, code=None, reason=""))) == 1
    assert h.observe(seen("d-0", "L0", 1, code=139, reason="Error")) == []
    assert h.failures[0].exit.exit_code == 139


@pytest.mark.parametrize(("events", "stuck", "action", "says"), [
    ([], 5, "wait", "unschedulable for 5 s (grace 600 s)"),
    ([], 601, "fail", "no cluster autoscaler reported on the pod (TriggeredScaleUp / NotTriggerScaleUp events: none)"),
    ([{"reason": "TriggeredScaleUp", "message": "pod triggered scale-up: [{pool 1->2}]"}], 5000, "scaling",
     "a cluster autoscaler is adding nodes for it (TriggeredScaleUp: pod triggered scale-up: [{pool 1->2}])"),
    ([{"reason": "NotTriggerScaleUp", "message": "pod didn't trigger scale-up: 1 max node group size reached"}],
     601, "fail", "the cluster autoscaler is not adding nodes for it (NotTriggerScaleUp: pod didn't trigger scale-up: "
                  "1 max node group size reached)"),
    ([{"reason": "NotTriggerScaleUp", "message": "no"}], 10, "wait", "grace 600 s"),
    # the newest verdict decides
    ([{"reason": "TriggeredScaleUp", "message": "a"}, {"reason": "NotTriggerScaleUp", "message": "b"}], 601, "fail",
     "(NotTriggerScaleUp: b)"),
    ([{"reason": "NotTriggerScaleUp", "message": "b"}, {"reason": "FailedScheduling", "message": "x"},
      {"reason": "TriggeredScaleUp", "message": "a"}], 601, "scaling", "(TriggeredScaleUp: a)"),
])
def test_unschedulable_judgement(events, stuck, action, says):
    j = w.judge_unschedulable("d-0-2", "Unschedulable: 0/2 nodes are available", stuck, 600, events)
    assert j.action == action and says in j.message, j
    if action == "fail":
        assert "Unschedulable: 0/2 nodes are available" in j.message and "deploy.unschedulable_grace_s" in j.message


def test_autoscaler_reason_strings():
    # cluster-autoscaler's event reasons (eventing_scale_up_processor.go); a typo would silently never match
    assert (w.TRIGGERED_SCALE_UP, w.NOT_TRIGGER_SCALE_UP, w.LWS_RECREATE_GROUP) == (
        "TriggeredScaleUp", "NotTriggerScaleUp", "RecreateGroup")


def test_pod_seen_reads_restarts_and_last_termination():
    from dsv3ctl.adapters import kube as k

    term = client.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled", message="killed")
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="d-0-1", uid="u1", labels={k.L_GROUP: "2", k.L_REVISION: "abc"}),
        spec=client.V1PodSpec(containers=[], node_name="n1"),
        status=client.V1PodStatus(
            init_container_statuses=[client.V1ContainerStatus(
                name="init", image="i", image_id="", ready=True, restart_count=0,
                state=client.V1ContainerState(terminated=client.V1ContainerStateTerminated(exit_code=0)))],
            container_statuses=[
                client.V1ContainerStatus(name="dsv3", image="i", image_id="", ready=False, restart_count=1,
                                         last_state=client.V1ContainerState(terminated=term)),
                client.V1ContainerStatus(name="side", image="i", image_id="", ready=True, restart_count=0)]))
    p = k.pod_seen(pod)
    assert (p.name, p.uid, p.group, p.revision, p.node) == ("d-0-1", "u1", 2, "abc", "n1")
    assert p.containers == (w.ContainerExit("dsv3", 1, 137, "OOMKilled", "killed"),)
    assert p.restarts == 1


@pytest.mark.parametrize(("key", "bad"), [("max_recreations", 0), ("unschedulable_grace_s", 0)])
def test_spec_keys_are_validated(run_cli, write_spec, key, bad):
    r = run_cli("spec", "show", "--spec", write_spec({"deploy": {key: bad}}))
    assert r.code == 2, r.out + r.err
    assert f"deploy.{key}" in r.err and "must be >= 1" in r.err, r.err


def test_spec_key_defaults():
    from dsv3ctl.core.spec import load_spec

    d = load_spec(None).deploy
    assert d.max_recreations == 3 and d.unschedulable_grace_s == 600
