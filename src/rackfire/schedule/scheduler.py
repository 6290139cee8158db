"""schedule(): where each wanted instance runs. Feasibility first, then ranking, Nomad-style;
pure and deterministic (the order hosts come in never matters)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rackfire.model.host import Host
from rackfire.model.instance import InstanceKey
from rackfire.schedule.ask import Ask, RoleRef, role_of
from rackfire.schedule.feasibility import Check, Ledger, Rejection, check
from rackfire.schedule.placement import Decision, Placement
from rackfire.schedule.search import Exhaustive, Indexed, Search


def schedule(hosts: Iterable[Host], placed: Mapping[InstanceKey, str],
             wanted: Mapping[InstanceKey, Ask], *, explain: bool = False) -> Placement:
    """Place every instance of `wanted` (instance -> what it asks) on `hosts`.

    `placed` says where instances run now: one stays on its host while that host is ready
    and can still hold it (never moved to rebalance). `Host.reserved` must not count the
    instances given here; `placed` entries not in `wanted` are ignored (they are going).

    With `explain`, each decision ranks every host that could take the instance and keeps
    every other host's failed checks (what `plan --explain` prints): that is hosts x
    instances of work. Without it the same hosts are chosen from an index, and a decision
    keeps only its chosen host (and, when nothing fits, every host's failed checks).
    """
    by_name = hosts_by_name(hosts)
    ledger = Ledger(by_name)
    order = placement_order(wanted)
    decided: dict[InstanceKey, Decision] = {}
    leaving: dict[InstanceKey, tuple[Rejection, ...]] = {}

    # Instances that stay go first: they hold their reservation already, and a new instance
    # must not take it from under them.
    for key in order:
        where = placed.get(key)
        if where is None:
            continue
        host = by_name.get(where)
        why = check(host, key, wanted[key], ledger) if host else (
            Rejection(where, Check.HOST, "not known"),)
        if why:
            leaving[key] = why
        else:
            ledger.add(key, where, wanted[key].need)
            decided[key] = Decision(key, wanted[key], where, kept=True)

    pick: Search = Exhaustive(by_name, ledger) if explain else Indexed(by_name, ledger)
    for key in order:
        if key in decided:
            continue
        ask = wanted[key]
        best, rejected = pick.place(key, ask)
        decided[key] = Decision(key, ask, best[0].host if best else None,
                                previous=placed.get(key), left=leaving.get(key, ()),
                                ranked=best, rejected=rejected)
    return Placement(tuple(decided[k] for k in order))


def move(hosts: Iterable[Host], placed: Mapping[InstanceKey, str],
         wanted: Mapping[InstanceKey, Ask], key: InstanceKey, to: str | None = None) -> Decision:
    """Where `key` goes when it leaves its host (`placed[key]`), every other instance held
    where it is placed (one on a draining host too: it keeps its reservation there until it
    moves itself): the best other ready host, or only `to` when it is given."""
    by_name = hosts_by_name(hosts)
    ledger = Ledger(by_name)
    for k in placement_order(wanted):
        where = placed.get(k)
        if k != key and where in by_name:
            ledger.add(k, where, wanted[k].need)
    ask, source = wanted[key], placed.get(key)
    names = [n for n in sorted(by_name) if n != source and (to is None or n == to)]
    best, rejected = Exhaustive(by_name, ledger).find(key, ask, names)
    if to is not None and to not in by_name:
        rejected += (Rejection(to, Check.HOST, "not known"),)
    return Decision(key, ask, best[0].host if best else None, previous=source, ranked=best,
                    rejected=rejected)


def placement_order(wanted: Iterable[InstanceKey]) -> list[InstanceKey]:
    """Role order (as roles first appear in `wanted`: a stack file's order), then index."""
    roles: dict[RoleRef, int] = {}
    keys = list(wanted)
    for k in keys:
        roles.setdefault(role_of(k), len(roles))
    return sorted(keys, key=lambda k: (roles[role_of(k)], k.index))


def hosts_by_name(hosts: Iterable[Host]) -> dict[str, Host]:
    by_name: dict[str, Host] = {}
    for h in hosts:
        if h.name in by_name:
            raise ValueError(f"host {h.name} is given twice")
        by_name[h.name] = h
    return by_name
