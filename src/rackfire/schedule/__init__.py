"""The pure scheduler: hosts, current placements and wanted instances in; a placement with
the reason for every choice out. No I/O, no clock, no randomness: `rackfire.model` only."""

from rackfire.schedule.ask import Ask, RoleRef, Strategy, role_of, wanted_for
from rackfire.schedule.capacity import (
    PAIRED_MAX,
    Headroom,
    HostUsage,
    Loss,
    Redundancy,
    Room,
    StackSurvival,
    Survival,
    Verdict,
    headroom,
    lose,
    redundancy,
    survival,
    usage,
)
from rackfire.schedule.explain import explain, explain_decision
from rackfire.schedule.feasibility import Check, Rejection
from rackfire.schedule.placement import Decision, Placement
from rackfire.schedule.ranking import Candidate, Score
from rackfire.schedule.scheduler import move, placement_order, schedule

__all__ = [
    "PAIRED_MAX",
    "Ask",
    "Candidate",
    "Check",
    "Decision",
    "Headroom",
    "HostUsage",
    "Loss",
    "Placement",
    "Redundancy",
    "Rejection",
    "RoleRef",
    "Room",
    "Score",
    "StackSurvival",
    "Strategy",
    "Survival",
    "Verdict",
    "explain",
    "explain_decision",
    "headroom",
    "lose",
    "move",
    "placement_order",
    "redundancy",
    "role_of",
    "schedule",
    "survival",
    "usage",
    "wanted_for",
]
