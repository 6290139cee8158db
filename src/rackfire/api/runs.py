"""Routes for runs (one-off tasks, `rackfire run`; a job's slots), jobs and autoscaling:
beside /v1/stacks, not under it (/v1/stacks/{stack}/{operation} takes that path)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from rackfire.api.answers import AutoscaleAnswer, JobAnswer, RunAnswer, run_answer
from rackfire.api.types import Name, StackPath, errors
from rackfire.control.controller import Controller
from rackfire.control.jobs import exit_status
from rackfire.errors import NotFound
from rackfire.model import cron
from rackfire.model.records import Run
from rackfire.model.stack import NAME_PATTERN
from rackfire.plan.autoscale import amount as _amount

RunNumber = Annotated[int, PathParam(ge=1, le=2**53, description="a run's number in its stack")]
MAX_ARG = 64 * 1024


class StartTask(BaseModel):
    role: Name
    command: list[Annotated[str, Field(max_length=MAX_ARG)]] = Field(
        [], max_length=1024, description="[] runs the role's own command")
    timeout: float | None = Field(None, gt=0, le=7 * 86400, description="seconds (default: "
                                  "the job's, or 1h)")


def add_run_routes(app: FastAPI, controller: Controller, actor: Any) -> None:
    def answer(run: Run) -> RunAnswer:
        return run_answer(run, exit_status(run))

    @app.post("/v1/runs/{stack}", responses=errors(400, 404, 409))
    def start(stack: StackPath, body: StartTask, who: str = actor) -> RunAnswer:
        """Run a command once in a fresh instance of the role (its image, release, config
        and env), as `cf run-task` does; the answer comes once it is claimed."""
        return answer(controller.jobs.start_task(stack, body.role, tuple(body.command),
                                                 body.timeout, who))

    @app.get("/v1/runs/{stack}", responses=errors(404))
    def runs(stack: StackPath,
             role: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[RunAnswer]:
        """The newest first."""
        return [answer(r) for r in controller.store.runs.of_stack(stack, role, limit)]

    @app.get("/v1/runs/{stack}/{number}", responses=errors(404))
    def run(stack: StackPath, number: RunNumber) -> RunAnswer:
        found = controller.store.runs.get(stack, number)
        if found is None:
            raise NotFound(f"stack {stack} has no run #{number}",
                           hint=f"`rackfire jobs {stack}` lists its runs")
        return answer(found)

    @app.post("/v1/runs/{stack}/{number}/cancel", responses=errors(404))
    def cancel(stack: StackPath, number: RunNumber, who: str = actor) -> RunAnswer:
        """Stop it (SIGTERM, then SIGKILL after the role's stop_timeout), if it runs."""
        return answer(controller.jobs.cancel(stack, number, who))

    @app.get("/v1/jobs/{stack}", responses=errors(404))
    def job_list(stack: StackPath) -> list[JobAnswer]:
        rec = controller.store.get_stack(stack)
        if rec is None:
            raise NotFound(f"no stack {stack}", hint="`rackfire ps` lists the stacks' instances")
        out = []
        now = int(controller.clock())
        for role in rec.spec.roles:
            if role.job is None:
                continue
            past = controller.store.runs.of_stack(stack, role.name, role.job.history)
            out.append(JobAnswer(
                stack=stack, role=role.name, schedule=role.job.schedule,
                next_slot=cron.parse(role.job.schedule).next_after(now),
                concurrency=role.job.concurrency, catch_up=role.job.catch_up,
                timeout=role.job.timeout, history=role.job.history,
                active=sum(1 for r in past if r.active), runs=[answer(r) for r in past]))
        return out


def add_autoscale_routes(app: FastAPI, controller: Controller) -> None:
    @app.get("/v1/autoscale/{stack}", responses=errors(404))
    def autoscale(stack: StackPath,
                  role: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
                  ) -> list[AutoscaleAnswer]:
        """Each scaled role's metric, target, the count it wants and why."""
        rec = controller.store.get_stack(stack)
        if rec is None:
            raise NotFound(f"no stack {stack}", hint="`rackfire ps` lists the stacks' instances")
        out = []
        for r in rec.spec.roles:
            if r.scale is None or (role is not None and r.name != role):
                continue
            st = controller.autoscaler.state(stack, r.name)
            d, t = st.last, r.scale.target
            ready = dict(d.values).get("ready") if d else None
            out.append(AutoscaleAnswer(
                stack=stack, role=r.name, min=r.scale.min, max=r.scale.max,
                target=f"{t.kind} {_amount(t.kind, t.value)}" if t else "", count=r.count,
                ready=ready if isinstance(ready, int) else None,
                metric=d.metric if d else None, wanted=d.wanted if d else None,
                min_now=d.min_now if d else None, reason=d.reason if d else "",
                decided=d.at if d else None, error=st.error))
        return out
