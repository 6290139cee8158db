"""The autoscaler in the controller harness (real Store, Fleet, Controller; an in-memory host
whose instances show a set cpu, and an lb whose HAProxy stats page the test writes): it
scales out at once under load, back in only after the cooldown, within bounds; its counts
are overrides (as `scale`'s) with the metric in the event; a schedule window raises min."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Harness, harness

from rackfire.spec import load_stack_text

STACK = "s"
FIXTURE = Path(__file__).parent / "fixtures" / "haproxy_stat.csv"


def stack(scale: str, extra: str = "") -> str:
    return (f"stack: {STACK}\nroles:\n  app:\n    image: base\n    command: [serve]\n"
            f"    scale: {scale}\n{extra}")


def run(h: Harness, seconds: float, step: float = 2.0, load: float | None = None) -> None:
    """The controller's loops in fake time; `load` (cpu %, all told) is shared by the app
    instances that run, as a load balancer would share it."""
    end = h.clock() + seconds
    while h.clock() < end:
        if load is not None:
            running = [k for k, f in h.host.instances(STACK).items()
                       if k.role == "app" and f.state.value == "running"]
            h.host.runtime.cpu["app"] = load / max(1, len(running))
        h.beat()
        h.controller.autoscaler.tick()
        h.controller.reconcile(STACK)
        h.clock.advance(step)


def count(h: Harness) -> int:
    rec = h.store.get_stack(STACK)
    assert rec is not None
    return rec.spec.role("app").count


def test_cpu_scales_out_at_once_and_in_after_the_cooldown(tmp_path: Path) -> None:
    h = harness(tmp_path)
    try:
        h.controller.apply(load_stack_text(stack("{min: 2, max: 8, target: {cpu: 60%}, "
                                                 "cooldown: 1m}"), "stack.yaml"), None)
        run(h, 10)
        assert count(h) == 2
        run(h, 2, load=300.0)  # a spike: 150% each, 2.5x the target
        assert count(h) == 5  # ceil(2 * 150 / 60), in one step
        event = next(e for e in reversed(h.store.events(STACK)) if e.action == "autoscale")
        assert "cpu 150% of target 60% on 2 ready: 2 → 5" in event.reason
        assert event.actor == "autoscaler"
        [override] = h.store.overrides(STACK)
        assert (override.field, override.value, override.actor) == ("count", 5, "autoscaler")
        run(h, 20, load=300.0)
        assert count(h) == 5 and len(h.host.instances(STACK)) == 5  # 60% each: settled
        run(h, 40, load=50.0)  # the load is gone
        assert count(h) == 5  # within the cooldown: held
        last = h.controller.autoscaler.state(STACK, "app").last
        assert last is not None and "holding 5" in last.reason
        run(h, 40, load=50.0)
        assert count(h) == 2  # ceil(5 * 10 / 60) = 1, but min is 2
        run(h, 2, load=2000.0)
        assert count(h) == 8  # never past max
    finally:
        h.close()


def page(total: int) -> str:
    """The real stats page with the app backend's request counters at `total`."""
    rows = FIXTURE.read_text().splitlines()
    out = []
    for row in rows:
        cols = row.split(",")
        if cols[:2] == ["app", "BACKEND"]:
            cols[7] = cols[48] = str(total)
        out.append(",".join(cols))
    return "\n".join(out) + "\n"


def test_requests_per_instance_come_from_the_haproxy_in_front(tmp_path: Path) -> None:
    h = harness(tmp_path)
    lb = "  lb:\n    image: base\n    command: [haproxy]\n    uses: [app]\n"
    try:
        h.controller.apply(load_stack_text(stack(
            "{min: 2, max: 10, target: {requests_per_instance: 100/s}}", lb), "stack.yaml"),
            None)
        run(h, 10)
        [key] = [k for k in h.host.instances(STACK) if k.role == "lb"]
        total = 0
        for _ in range(3):  # 200 requests every 2 s: 100/s over 2 serving servers
            total += 200
            h.host.stats_pages[key] = page(total)
            run(h, 2)
        assert count(h) == 2  # 50/s per instance: below target, held at min
        for _ in range(3):  # 1600 every 2 s: 800/s, 400/s on each of the 2 ready
            total += 1600
            h.host.stats_pages[key] = page(total)
            run(h, 2)
        assert count(h) == 8  # ceil(2 * 400 / 100)
        event = next(e for e in reversed(h.store.events(STACK)) if e.action == "autoscale")
        assert "requests 400/s" in event.reason and "requests_per_second 800" in event.reason
        # A page that cannot be read: unknown, the count holds.
        del h.host.stats_pages[key]
        run(h, 10)
        state = h.controller.autoscaler.state(STACK, "app")
        assert count(h) == 8 and "connection refused" in state.error
    finally:
        h.close()


def test_a_schedule_window_raises_min(tmp_path: Path) -> None:
    h = harness(tmp_path)
    try:
        minute = int(h.clock() // 60 * 60)
        at = f"{(minute // 60 + 2) % 60} * * * *"  # two minutes from now, every hour
        window = f"{{cron: '{at}', min: 4, for: 5m}}"
        h.controller.apply(load_stack_text(stack(
            f"{{min: 1, max: 6, target: {{cpu: 60%}}, schedule: [{window}]}}"),
            "stack.yaml"), None)
        run(h, 10)
        before = count(h)
        run(h, 180, step=5.0)
        assert before == 1 and count(h) == 4
        run(h, 400, step=10.0)
        assert count(h) == 1  # it closed, and the cooldown passed
    finally:
        h.close()


def test_warm_instances_are_made_stopped_and_a_scale_out_starts_them(tmp_path: Path) -> None:
    h = harness(tmp_path)
    try:
        h.controller.apply(load_stack_text(stack("{min: 1, max: 4, warm: 2, target: "
                                                 "{cpu: 60%}, cooldown: 30s}"), "stack.yaml"),
                           None)
        run(h, 10, load=10.0)
        facts = h.host.instances(STACK)
        assert {k.name: f.state.value for k, f in facts.items()} == {
            "app-0": "running", "app-1": "stopped", "app-2": "stopped"}
        assert facts[next(k for k in facts if k.index == 1)].warm
        assert h.problems(STACK) == []  # converged with them stopped
        made = [c.target for c in h.host.calls(["create"])]
        run(h, 2, load=150.0)  # 150% on one: ceil(150 / 60) = 3
        assert count(h) == 3
        run(h, 6, load=150.0)
        facts = h.host.instances(STACK)
        assert [k.name for k, f in sorted(facts.items()) if f.state.value == "running"] == [
            "app-0", "app-1", "app-2"]
        # app-1 and app-2 were started, not made again; app-3 is the new warm one (max 4).
        calls = h.instance_calls()
        assert [c for c in calls[len(made):] if c.startswith("create")] == [
            "create s/app/3"]
        assert "restart s/app/1" in calls and "restart s/app/2" in calls
        # Started before the new warm one is made: the starts are the spike's fast path.
        assert calls.index("restart s/app/2") < calls.index("create s/app/3")
        assert facts[next(k for k in facts if k.index == 3)].state.value == "stopped"
        events = [e.reason for e in h.store.events(STACK) if e.action == "restart"]
        assert "a warm instance, started" in events
        statuses = h.store.statuses(STACK)
        assert all(st.restarts == 0 for st in statuses.values())  # not counted as failures
        # The load goes: back in after the cooldown, the stopped ones kept warm.
        run(h, 60, load=10.0)
        assert count(h) == 1
        facts = h.host.instances(STACK)
        assert {k.name: f.state.value for k, f in facts.items()} == {
            "app-0": "running", "app-1": "stopped", "app-2": "stopped"}
    finally:
        h.close()
