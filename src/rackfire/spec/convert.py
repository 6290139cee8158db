"""Validated stack file models -> the frozen dataclasses of rackfire.model.stack.

Pure apart from path arithmetic: given the stack file's directory (the CLI), the file's
paths (`app:` dirs, tarballs) are made absolute against it; without one (the server, which
reads no path of a client's) they are kept as the file writes them, labels for people.
Keys left out of the file are left out here
too, so defaults live in one place: the dataclasses. Roles and images keep file order; env
and files are sorted by key so that equal stacks compare (and digest) equal.
"""

from __future__ import annotations

import os.path  # path arithmetic only (tests/unit/test_layering.py)
from pathlib import Path
from typing import Any

from rackfire.model.stack import (
    AppSource,
    BackupPolicy,
    DataDisk,
    HaPolicy,
    HealthSpec,
    ImageSpec,
    JobPolicy,
    Keep,
    LogLimits,
    PlacementRule,
    ReloadSpec,
    Resources,
    RestartPolicy,
    RoleSpec,
    StackSpec,
    UpdatePolicy,
)
from rackfire.spec.schema import (
    BackupModel,
    HealthModel,
    ImageModel,
    JobModel,
    LogsModel,
    ReloadModel,
    ResourcesModel,
    RestartModel,
    RoleModel,
    StackModel,
    UpdateModel,
    normalize_file_path,
)


def to_stack_spec(model: StackModel, base_dir: Path | None) -> StackSpec:
    return StackSpec(
        name=model.stack,
        images=tuple(_image(name, image, base_dir) for name, image in model.images.items()),
        roles=tuple(_role(name, role, base_dir) for name, role in model.roles.items()),
        vip=model.vip or "",
    )


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _resolved(path: str, base_dir: Path | None) -> str:
    return path if base_dir is None else os.path.abspath(os.path.join(base_dir, path))


def _image(name: str, m: ImageModel, base_dir: Path | None) -> ImageSpec:
    path = _resolved(m.path, base_dir) if m.path else None
    packages = tuple(m.packages) if m.packages is not None else None
    return ImageSpec(name=name, source=m.source,
                     **_given(suite=m.suite, packages=packages, mirror=m.mirror, path=path))


def _role(name: str, m: RoleModel, base_dir: Path | None) -> RoleSpec:
    return RoleSpec(
        name=name,
        image=m.image,
        count=_count(m),
        command=tuple(m.command),
        resources=_resources(m.resources),
        ports=tuple(m.ports),
        env=tuple(sorted(m.env.items())),
        files=tuple(sorted((normalize_file_path(path), text) for path, text in m.files.items())),
        health=_health(m.health),
        uses=tuple(m.uses),
        runtime=m.runtime,
        restart=_restart(m.restart),
        update=_update(m.update),
        reload=_reload(m.reload),
        data=DataDisk(m.data.path, m.data.size, m.data.replicas) if m.data else None,
        # The CLI uploads the dir; the server fills in its digest (api: StackSource.sources).
        app=AppSource(_resolved(m.app, base_dir)) if m.app else None,
        logs=_logs(m.logs),
        ha=HaPolicy(m.ha.singleton, m.ha.replace, m.ha.fence, m.ha.primary) if m.ha
        else HaPolicy(),
        placement=PlacementRule(m.placement.spread if m.placement else None),
        egress=m.egress,
        backup=_backup(m.backup),
        job=_job(m.schedule, m.job),
        before=tuple(m.release.before) if m.release else (),
        scale=m.scale.policy() if m.scale else None,
        **_given(stop_timeout=m.stop_timeout),
    )


def _logs(m: LogsModel | None) -> LogLimits:
    if m is None:
        return LogLimits()
    return LogLimits(**_given(max_size=m.max_size, max_files=m.max_files))


def _update(m: UpdateModel | None) -> UpdatePolicy:
    if m is None:
        return UpdatePolicy()
    return UpdatePolicy(**_given(max_unavailable=m.max_unavailable, max_surge=m.max_surge,
                                 health_timeout=m.health_timeout))


def _reload(m: ReloadModel | None) -> ReloadSpec | None:
    if m is None:
        return None
    return ReloadSpec(signal=m.signal, exec=tuple(m.exec) if m.exec else None)


def _restart(m: RestartModel | None) -> RestartPolicy:
    return RestartPolicy(**_given(attempts=m.attempts, window=m.window)) if m else RestartPolicy()


def _resources(m: ResourcesModel | None) -> Resources:
    if m is None:
        return Resources()
    return Resources(**_given(cpu=m.cpu, memory=m.memory, disk=m.disk, pids=m.pids))


def _health(m: HealthModel | None) -> HealthSpec | None:
    if m is None:
        return None
    return HealthSpec(**_given(http=m.http, tcp=m.tcp, exec=tuple(m.exec) if m.exec else None,
                               interval=m.interval, timeout=m.timeout, retries=m.retries,
                               grace=m.grace))


def _count(m: RoleModel) -> int:
    if m.schedule:
        return 0  # a job's runs are its only instances
    if m.scale is not None and "count" not in m.model_fields_set:
        return m.scale.min  # where autoscaling starts
    return m.count


def _job(schedule: str | None, m: JobModel | None) -> JobPolicy | None:
    if schedule is None:
        return None
    if m is None:
        return JobPolicy(schedule)
    return JobPolicy(schedule, m.concurrency, m.timeout, m.history, m.catch_up)


def _backup(m: BackupModel | None) -> BackupPolicy | None:
    if m is None:
        return None
    k = m.keep
    keep = Keep(k.last, k.hourly, k.daily, k.weekly, k.monthly) if k else Keep(last=7)
    return BackupPolicy(m.every, keep, m.to)
