"""The autoscale decider: out at once, in only after the cooldown, tolerance, bounds,
schedule min, unknown metrics, reasons that carry the values; and, over seeded random runs,
always within bounds and never in during the window after a higher recommendation."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from rackfire.model.stack import MAX_COUNT
from rackfire.plan.autoscale import (
    DEFAULT_COOLDOWN,
    Decision,
    History,
    Policy,
    Sample,
    Target,
    TargetKind,
    decide,
    validate,
)

CPU60 = Policy(min=2, max=20, target=Target(TargetKind.CPU, 60.0))
RPS200 = Policy(min=2, max=20, target=Target(TargetKind.REQUESTS_PER_INSTANCE, 200.0))


def run(policy: Policy, current: int, steps: Sequence[tuple[float, int, float | None]],
        active_min: int | None = None) -> list[Decision]:
    """Each step (at, ready, metric); the count follows each decision, as the controller's."""
    history, out = History(), []
    for at, ready, metric in steps:
        d, history = decide(policy, current, Sample(at, ready, metric), history, active_min)
        out.append(d)
        current = d.wanted
    return out


def test_scales_out_at_once_as_far_as_needed() -> None:
    # a 5x spike: 300% of a 60% target on 2 -> ceil(2 * 5) = 10 in one step
    (d,) = run(CPU60, 2, [(0.0, 2, 300.0)])
    assert (d.wanted, d.recommendation, d.changed) == (10, 10, True)
    assert d.reason == "cpu 300% of target 60% on 2 ready: 2 → 10"


def test_hpa_formula_rounds_up() -> None:
    (d,) = run(CPU60, 2, [(0.0, 2, 94.0)])
    assert d.wanted == 4  # ceil(2 * 94 / 60) = ceil(3.13)
    assert d.reason == "cpu 94% of target 60% on 2 ready: 2 → 4"


def test_exact_ratios_do_not_round_up_by_float_error() -> None:
    p = Policy(1, 20, Target(TargetKind.LATENCY_P95, 0.35))
    (d,) = run(p, 3, [(0.0, 3, 0.7)])
    assert d.wanted == 6


def test_scales_in_only_after_the_window() -> None:
    # 4 instances at 75/s each against 200/s: the metric asks 2, the window holds 4
    ds = run(RPS200, 4, [(0.0, 4, 75.0), (73.0, 4, 75.0), (119.0, 4, 75.0), (121.0, 4, 75.0)])
    assert [d.wanted for d in ds] == [4, 4, 4, 2]
    # the metric asks 2 from the start; a fresh History counts the current 4 at 0
    assert [d.recommendation for d in ds] == [2, 2, 2, 2]


def test_scale_in_waits_for_a_recent_higher_recommendation() -> None:
    steps = [(0.0, 4, 200.0),  # on target: holds 4, recorded
             (73.0, 4, 75.0), (119.0, 4, 75.0), (121.0, 4, 75.0)]
    ds = run(RPS200, 4, steps)
    assert [d.wanted for d in ds] == [4, 4, 4, 2]
    assert ds[1].reason == ("requests 75/s per instance below target 200/s on 4 ready: "
                            "wants 2, holding 4 for another 47s (cooldown 2m after a "
                            "recommendation of 4 or more)")
    assert ds[3].reason.endswith("4 → 2 (no higher recommendation in the last 2m)")


def test_scale_in_goes_to_the_highest_recommendation_of_the_window() -> None:
    history = History(((0.0, 8), (60.0, 5)))
    d, _ = decide(CPU60, 8, Sample(130.0, 8, 10.0), history, None)
    # 8's proposal is out of the window; 5's is not: down to 5, 2 once it is out too
    assert d.wanted == 5
    assert d.reason == ("cpu 10% below target 60% on 8 ready: 8 → 5, the highest "
                        "recommendation of the last 2m; 2 in another 50s")


def test_a_dip_shorter_than_the_cooldown_never_scales_in() -> None:
    steps = [(t, 6, 20.0 if 10 <= t < 100 else 60.0) for t in range(0, 300, 2)]
    ds = run(CPU60, 6, [(float(a), r, m) for a, r, m in steps])
    assert {d.wanted for d in ds} == {6}


def test_tolerance_band_holds() -> None:
    for metric in (54.5, 60.0, 65.9):
        (d,) = run(CPU60, 4, [(0.0, 4, metric)])
        assert (d.wanted, d.recommendation, d.changed) == (4, 4, False)
    (d,) = run(CPU60, 4, [(0.0, 4, 62.0)])
    assert d.reason == "cpu 62% within 10% of target 60%: holding 4"
    (d,) = run(CPU60, 4, [(0.0, 4, 67.0)])
    assert d.wanted == 5


def test_zero_tolerance_acts_on_any_difference() -> None:
    p = Policy(1, 20, Target(TargetKind.CPU, 60.0), tolerance=0.0)
    (d,) = run(p, 10, [(0.0, 10, 61.0)])
    assert d.wanted == 11


def test_clamped_to_max_and_min() -> None:
    (d,) = run(CPU60, 2, [(0.0, 2, 1000.0)])
    assert d.wanted == 20
    assert d.reason == "cpu 1000% of target 60% on 2 ready: 2 → 20 (max 20; the metric asks 34)"
    (d,) = run(CPU60, 2, [(0.0, 2, 1.0)])
    assert d.wanted == 2
    assert d.reason == "cpu 1% below target 60% on 2 ready: holding 2 (min 2)"


def test_below_min_or_above_max_is_corrected_at_once() -> None:
    (d,) = run(CPU60, 1, [(0.0, 1, 60.0)])
    assert d.wanted == 2
    d, _ = decide(CPU60, 25, Sample(0.0, 25, 60.0), History(((-10.0, 25),)), None)
    assert d.wanted == 20
    assert d.reason.endswith("25 → 20 (max 20)")


def test_schedule_raises_min() -> None:
    (d,) = run(CPU60, 2, [(0.0, 2, 30.0)], active_min=6)
    assert (d.wanted, d.min_now) == (6, 6)
    assert d.reason == "cpu 30% below target 60% on 2 ready: 2 → 6 (schedule min 6)"
    (d,) = run(CPU60, 2, [(0.0, 2, 30.0)], active_min=50)
    assert (d.wanted, d.min_now) == (20, 20)  # never above max
    (d,) = run(CPU60, 2, [(0.0, 2, 30.0)], active_min=1)
    assert d.min_now == 2  # never below min


def test_schedule_only_follows_min_and_leaves_after_the_cooldown() -> None:
    p = Policy(2, 20, None, windows=(("0 8 * * 1-5", 6, 3600.0),))
    history, current = History(), 2
    wanted = []
    for at, active in ((0.0, 6), (60.0, 6), (62.0, None), (179.0, None), (181.0, None)):
        d, history = decide(p, current, Sample(at, current, None), history, active)
        wanted.append(d.wanted)
        current = d.wanted
    assert wanted == [6, 6, 6, 6, 2]  # the window ended by 62: in 2m after its last 6 (60)
    assert d.reason == "schedule only: 6 → 2 (no higher recommendation in the last 2m)"


def test_unknown_metric_holds_within_bounds() -> None:
    (d,) = run(CPU60, 7, [(0.0, 7, None)])
    assert (d.wanted, d.changed, d.metric) == (7, False, None)
    assert d.reason == "no metric (cpu unknown): holding 7"
    (d,) = run(CPU60, 1, [(0.0, 0, None)])
    assert d.wanted == 2
    assert d.reason == "no metric (cpu unknown): 1 → 2 (min 2)"
    (d,) = run(CPU60, 7, [(0.0, 7, math.nan)])
    assert d.wanted == 7


def test_a_gap_in_metrics_does_not_shorten_the_wait() -> None:
    ds = run(CPU60, 8, [(0.0, 8, None), (100.0, 8, 10.0), (121.0, 8, 10.0)])
    assert [d.wanted for d in ds] == [8, 8, 2]


def test_none_ready_uses_the_current_count() -> None:
    (d,) = run(CPU60, 4, [(0.0, 0, 120.0)])
    assert d.wanted == 8
    assert d.reason == "cpu 120% of target 60% none ready, on 4: 4 → 8"


def test_from_zero_any_load_asks_for_some() -> None:
    p = Policy(0, 10, Target(TargetKind.REQUESTS_PER_INSTANCE, 200.0))
    (d,) = run(p, 0, [(0.0, 0, 450.0)])
    assert d.wanted == 3
    (d,) = run(p, 0, [(0.0, 0, 0.0)])
    assert d.wanted == 0


def test_never_against_the_metric_while_instances_start_or_drain() -> None:
    # 6 wanted, 2 ready yet, still hot: ceil(2 * 1.5) = 3 would scale in; it holds 6
    (d,) = run(CPU60, 6, [(0.0, 2, 90.0)])
    assert d.wanted == 6
    # 3 wanted, 6 still ready while 3 drain, cool: ceil(6 * 0.8) = 5 would scale out
    (d,) = run(CPU60, 3, [(0.0, 6, 45.0)])
    assert d.wanted == 3


def test_latency_reason_in_milliseconds() -> None:
    p = Policy(2, 20, Target(TargetKind.LATENCY_P95, 0.150))
    (d,) = run(p, 4, [(0.0, 4, 0.300)])
    assert d.reason == "latency p95 300ms of target 150ms on 4 ready: 4 → 8"


def test_decision_carries_the_values() -> None:
    d, _ = decide(CPU60, 2, Sample(5.0, 2, 94.0, (("cpu.web-0", 90.0), ("cpu.web-1", 98.0))),
                  History(), None)
    values = dict(d.values)
    assert values["metric"] == 94.0 and values["target"] == 60.0
    assert values["ready"] == 2 and values["current"] == 2 and values["wanted"] == 4
    assert values["cpu.web-0"] == 90.0 and values["cpu.web-1"] == 98.0
    assert (d.at, d.metric, d.target, d.min_now) == (5.0, 94.0, 60.0, 2)


def test_history_is_pruned_to_the_window() -> None:
    h = History()
    for at in range(0, 300, 2):
        h = h.add(float(at), at, DEFAULT_COOLDOWN)
    assert min(t for t, _ in h.entries) > 298 - DEFAULT_COOLDOWN
    assert h.entries[-1] == (298.0, 298)


def test_a_clock_stepped_back_delays_a_scale_in_never_hastens_it() -> None:
    h = History(((1000.0, 9),))
    d, h = decide(CPU60, 9, Sample(10.0, 9, 10.0), h, None)  # clock went back 990s
    assert d.wanted == 9
    assert h.entries[0] == (10.0, 9)  # restamped: one window more, not 990s more
    d, _ = decide(CPU60, 9, Sample(131.0, 9, 10.0), h, None)
    assert d.wanted == 2


@pytest.mark.parametrize("seed", range(40))
def test_random_runs_stay_in_bounds_and_respect_the_window(seed: int) -> None:
    rng = random.Random(seed)
    kind = rng.choice(list(TargetKind))
    lo = rng.randint(0, 5)
    hi = rng.randint(max(lo, 1), 40)
    policy = Policy(lo, hi, Target(kind, rng.choice([0.2, 50.0, 60.0, 200.0])),
                    cooldown=rng.choice([0.0, 10.0, 120.0]),
                    tolerance=rng.choice([0.0, 0.1, 0.3]))
    current = rng.randint(0, 50)  # may start outside the bounds
    history = History()
    proposals: list[tuple[float, int]] = []  # the test's own record, independent of History
    at = rng.uniform(1e9, 2e9)
    for _ in range(200):
        at += rng.uniform(0.1, 5.0)
        active = rng.choice([None, None, None, rng.randint(0, 50)])
        ready = rng.randint(0, current + 2)
        metric = rng.choice([None, policy.target.value * rng.uniform(0, 6)]) \
            if policy.target else None
        d, history = decide(policy, current, Sample(at, ready, metric), history, active)
        min_now = min(max(lo, active or 0), hi)
        assert d.min_now == min_now
        assert min_now <= d.wanted <= hi
        assert d.changed == (d.wanted != current)
        proposal = min(max(d.recommendation, min_now), hi)
        proposals.append((at, proposal))
        if proposal > current:
            assert d.wanted == proposal  # out at once
        if d.wanted < current:
            recent = max(p for t, p in proposals if t > at - policy.cooldown or t == at)
            assert d.wanted >= min(recent, current)  # never below the window's highest
            assert d.wanted >= proposal
        assert str(d.current) in d.reason
        assert ("no metric" in d.reason) == (metric is None)
        current = d.wanted


def test_validate_accepts_a_good_policy() -> None:
    p = Policy(2, 20, Target(TargetKind.CPU, 60.0), warm=2, cooldown=120.0,
               windows=(("0 8 * * 1-5", 6, 3600.0),))
    assert validate(p) == []
    assert validate(Policy(0, 1, None, windows=(("* * * * *", 1, 3600.0),))) == []
    assert validate(Policy(1, 4, Target(TargetKind.CPU, 100.0))) == []


@pytest.mark.parametrize(("policy", "field"), [
    (Policy(5, 2, Target(TargetKind.CPU, 60.0)), "min"),
    (Policy(-1, 2, Target(TargetKind.CPU, 60.0)), "min"),
    (Policy(0, 0, Target(TargetKind.CPU, 60.0)), "max"),
    (Policy(1, MAX_COUNT + 1, Target(TargetKind.CPU, 60.0)), "max"),
    (Policy(1, 2, Target(TargetKind.CPU, 0.0)), "target.cpu"),
    (Policy(1, 2, Target(TargetKind.CPU, 150.0)), "target.cpu"),
    (Policy(1, 2, Target(TargetKind.MEMORY, 101.0)), "target.memory"),
    (Policy(1, 2, Target(TargetKind.LATENCY_P95, -0.1)), "target.latency_p95"),
    (Policy(1, 2, Target(TargetKind.REQUESTS_PER_INSTANCE, math.inf)),
     "target.requests_per_instance"),
    (Policy(1, 2, None), "target"),
    (Policy(1, 2, Target(TargetKind.CPU, 60.0), warm=3), "warm"),
    (Policy(1, 2, Target(TargetKind.CPU, 60.0), warm=-1), "warm"),
    (Policy(1, 2, Target(TargetKind.CPU, 60.0), cooldown=-1.0), "cooldown"),
    (Policy(1, 2, Target(TargetKind.CPU, 60.0), tolerance=1.0), "tolerance"),
    (Policy(1, 2, Target(TargetKind.CPU, 60.0), tolerance=-0.1), "tolerance"),
    (Policy(1, 2, None, windows=(("0 8 * * *", 3, 3600.0),)), "schedule[0].min"),
    (Policy(1, 2, None, windows=((" ", 1, 3600.0),)), "schedule[0].cron"),
])
def test_validate_names_the_field(policy: Policy, field: str) -> None:
    problems = validate(policy)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: ")


def test_validate_states_the_cpu_rule() -> None:
    (problem,) = validate(Policy(1, 2, Target(TargetKind.CPU, 150.0)))
    assert problem == ("target.cpu: is a percentage of one core (or of the role's cpu "
                       "limit), at most 100%, not 150%")
