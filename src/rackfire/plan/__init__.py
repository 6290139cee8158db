"""The pure planner: desired + observed in, a Plan of actions out. No I/O here, ever."""

from rackfire.model.instance import Control
from rackfire.plan.actions import Action, ActionKind, Plan, StackAction
from rackfire.plan.planner import plan_stack
from rackfire.plan.render import render_stack

__all__ = [
    "Action",
    "ActionKind",
    "Control",
    "Plan",
    "StackAction",
    "plan_stack",
    "render_stack",
]
