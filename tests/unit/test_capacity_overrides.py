"""The pure day-2 helpers: hard reservations, shrink refusals, overrides and targets."""

from __future__ import annotations

import pytest

from rackfire.control import capacity, overrides
from rackfire.errors import NotFound, PrereqError
from rackfire.model.agent import HostCapacity
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceState, Target
from rackfire.model.stack import Resources, RuntimeKind, StackSpec
from rackfire.spec import load_stack_text
from rackfire.store import Override

G = 1 << 30
M = 1 << 20
HOST = HostCapacity(cpus=2.0, memory=4 * G, disk=10 * G)


def spec(name: str = "s", count: int = 2, cpu: float = 0.5, memory: str = "1G",
         disk: str = "1G") -> StackSpec:
    return load_stack_text(f"""
stack: {name}
roles:
  web:
    image: base
    count: {count}
    command: [sleep, "1"]
    resources: {{cpu: {cpu}, memory: {memory}, disk: {disk}}}
""", "s.yaml")


def test_reservations_add_up_per_instance() -> None:
    r = capacity.reserved_by(spec(count=3))
    assert (r.cpus, r.memory, r.disk) == (1.5, 3 * G, 3 * G)


def test_a_change_the_host_cannot_hold_is_refused_with_the_numbers() -> None:
    with pytest.raises(PrereqError) as e:
        capacity.check_fits("h", HOST, spec(count=5), spec(count=2), [])
    assert "cpu 2.5 of 2 cores" in e.value.message and "memory 5G of 4G" in e.value.message
    # Other stacks count too.
    with pytest.raises(PrereqError):
        capacity.check_fits("h", HOST, spec(count=2), None, [spec("other", count=3)])
    capacity.check_fits("h", HOST, spec(count=4), None, [])


def test_a_change_that_reserves_no_more_is_never_refused() -> None:
    small_host = HostCapacity(cpus=1.0, memory=G, disk=G)
    capacity.check_fits("h", small_host, spec(count=2), spec(count=3), [])


def test_a_disk_never_shrinks() -> None:
    f = InstanceFacts(InstanceKey("s", "web", 1), InstanceState.RUNNING,
                      RuntimeKind.CONTAINER, "h", resources=Resources(disk=2 * G))
    with pytest.raises(PrereqError) as e:
        capacity.check_no_shrink(spec(disk="1G"), [f])
    assert "web-1's disk is 2G; it cannot shrink to 1G" in e.value.message
    capacity.check_no_shrink(spec(disk="3G"), [f])


def test_overrides_change_one_role_and_notes_name_the_disagreement() -> None:
    base = spec(count=2)
    scaled = overrides.with_role(base, "web", {"count": 5})
    assert scaled.role("web").count == 5 and base.role("web").count == 2
    resized = overrides.with_role(base, "web", {"memory": 512 * M})
    assert resized.role("web").resources.memory == 512 * M
    with pytest.raises(NotFound):
        overrides.with_role(base, "db", {"count": 1})
    notes = overrides.disagreements(base, [
        Override("web", "count", 5, "ann@h", 0.0),
        Override("web", "memory", 512 * M, "bo@h", 0.0),
        Override("web", "cpu", 0.5, "cy@h", 0.0)])  # the file agrees: no note
    assert len(notes) == 2
    assert notes[0].startswith(
        "roles.web.count: the file says 2, but `rackfire scale` set 5 (ann@h")
    assert "roles.web.resources.memory: the file says 1G" in notes[1] and "set 512M" in notes[1]


@pytest.mark.parametrize(("text", "want"), [
    ("shop", Target("shop")),
    ("shop/web", Target("shop", "web")),
    ("shop/web/3", Target("shop", "web", 3)),
    ("shop/web-3", Target("shop", "web", 3)),
    ("shop.web.3", Target("shop", "web", 3)),
    ("shop/my-role", Target("shop", "my-role")),
])
def test_targets_parse(text: str, want: Target) -> None:
    assert Target.parse(text) == want


@pytest.mark.parametrize("text", ["", "Shop", "shop/web/x", "a/b/c/d", "shop//1", "../x"])
def test_bad_targets_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="STACK/ROLE"):
        Target.parse(text)
