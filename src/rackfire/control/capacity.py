"""Hard reservations: what the desired stacks reserve on the host, checked against what it
has, before any change. Pure: specs and a capacity in, a refusal (or nothing) out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rackfire.errors import Conflict
from rackfire.model.agent import HostCapacity
from rackfire.model.host import Reservation
from rackfire.model.instance import InstanceFacts
from rackfire.model.stack import StackSpec
from rackfire.model.units import format_size


def reserved_by(spec: StackSpec) -> Reservation:
    """Every instance reserves its cpu, memory (when limited), its whole disk and its data
    disk. (A rollout's surge instances are not reserved: they live for minutes.)"""
    total = Reservation()
    for role in spec.roles:
        r = role.resources
        n = role.count
        data = role.data.size if role.data else 0
        total += Reservation((r.cpu or 0.0) * n, (r.memory or 0) * n, (r.disk + data) * n)
    return total


def check_fits(host: str, capacity: HostCapacity, new: StackSpec, current: StackSpec | None,
               others: Iterable[StackSpec]) -> None:
    """Refuse `new` in place of `current` if the host could not hold every reservation. A
    change that reserves no more than before is never refused (the host may have shrunk)."""
    rest = Reservation()
    for spec in others:
        rest += reserved_by(spec)
    want, had = rest + reserved_by(new), rest + reserved_by(current) if current else rest
    problems = []
    if want.cpus > capacity.cpus + 1e-9 and want.cpus > had.cpus:
        problems.append(f"cpu {want.cpus:g} of {capacity.cpus:g} cores")
    if want.memory > capacity.memory and want.memory > had.memory:
        problems.append(f"memory {format_size(want.memory)} of {format_size(capacity.memory)}")
    if want.disk > capacity.disk and want.disk > had.disk:
        problems.append(f"disk {format_size(want.disk)} of {format_size(capacity.disk)}")
    if problems:
        raise Conflict(
            f"host {host} cannot hold this: it would reserve {', '.join(problems)} "
            f"(stack {new.name}: {_show(reserved_by(new))})",
            hint="rackfire reserves what each instance asks for and never overcommits; "
            "lower the role's resources or count, or free capacity")


def check_no_shrink(spec: StackSpec, observed: Iterable[InstanceFacts]) -> None:
    """Disks grow online; shrinking one would need it offline and could lose data."""
    disks: Mapping[str, int] = {r.name: r.resources.disk for r in spec.roles}
    for f in sorted(observed, key=lambda f: f.key):
        want = disks.get(f.key.role)
        if want is not None and f.resources is not None and want < f.resources.disk:
            raise Conflict(
                f"roles.{f.key.role}.resources.disk: {f.key.name}'s disk is "
                f"{format_size(f.resources.disk)}; it cannot shrink to {format_size(want)}",
                hint="disks only grow (online, with no restart); to start over with smaller "
                f"disks, scale {f.key.role} to 0 (which deletes its data) and back")


def _show(r: Reservation) -> str:
    return f"cpu {r.cpus:g}, memory {format_size(r.memory)}, disk {format_size(r.disk)}"
