"""Which runtimes there are, and how an agent makes them: `{kind: entry}`, best first.

The only place that names a runtime's kind to choose code by it: everything else asks a
runtime's `caps` (model/runtime.py). An entry says whether its runtime can run on this host
as it is (`usable`), whether an agent offers it when not told which (`default`; the fake
never is), and whether it is made even when not offered (`always`: it needs nothing, and
what an earlier run made with it is still observed and removed).

`RACKFIRE_RUNTIMES=fake,process` (kinds, best first) tells an agent which to offer, as its
`runtimes` argument does; that is how the fake is enabled for tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rackfire.errors import PrereqError
from rackfire.model.stack import RuntimeKind
from rackfire.runtime.base import Runtime

ENV = "RACKFIRE_RUNTIMES"


@dataclass(frozen=True, slots=True)
class HostDirs:
    """Where a runtime keeps what it makes on this host (LocalAgent's layout)."""

    host: str
    instances: Path  # <data-dir>/instances: one dir per instance, any runtime
    volumes: Path  # <data-dir>/volumes: data disks, outliving their instances
    incoming: Path  # <data-dir>/incoming: disks copied here by a cold migration
    runc_root: Path  # runc's state, one per agent (simulated hosts share /run)


@dataclass(frozen=True, slots=True)
class Entry:
    make: Callable[[HostDirs], Runtime]
    usable: Callable[[], bool]
    default: bool
    always: bool = False


def _container(dirs: HostDirs) -> Runtime:
    from rackfire.runtime.container import ContainerRuntime, ensure_dirs

    ensure_dirs()
    return ContainerRuntime(dirs.instances, dirs.host, dirs.runc_root, volumes=dirs.volumes,
                            incoming=dirs.incoming)


def _process(dirs: HostDirs) -> Runtime:
    from rackfire.runtime.process import ProcessRuntime

    return ProcessRuntime(dirs.instances, dirs.host)


def _fake(dirs: HostDirs) -> Runtime:
    from rackfire.runtime.fake import FakeRuntime

    return FakeRuntime(dirs.instances, dirs.host)


def container_usable() -> bool:
    return os.geteuid() == 0 and shutil.which("runc") is not None


REGISTRY: Mapping[RuntimeKind, Entry] = {
    RuntimeKind.CONTAINER: Entry(_container, container_usable, default=True),
    RuntimeKind.PROCESS: Entry(_process, lambda: True, default=True, always=True),
    RuntimeKind.FAKE: Entry(_fake, lambda: True, default=False),
}


def offered(asked: tuple[RuntimeKind, ...] | None = None,
            env: Mapping[str, str] = os.environ) -> tuple[RuntimeKind, ...]:
    """The kinds an agent offers, best first: `asked`, else $RACKFIRE_RUNTIMES, else every
    default kind usable here, in the registry's order."""
    if asked is None and env.get(ENV, "").strip():
        try:
            asked = tuple(RuntimeKind(k.strip()) for k in env[ENV].split(",") if k.strip())
        except ValueError:
            raise PrereqError(f"${ENV}: {env[ENV]!r} names an unknown runtime",
                              hint=f"kinds: {', '.join(REGISTRY)}") from None
    if asked is not None:
        return asked
    return tuple(k for k, e in REGISTRY.items() if e.default and e.usable())


def build(kinds: tuple[RuntimeKind, ...], dirs: HostDirs,
          registry: Mapping[RuntimeKind, Entry] = REGISTRY) -> dict[RuntimeKind, Runtime]:
    """The runtimes for `kinds`, and those made `always`, in the registry's order."""
    return {k: e.make(dirs) for k, e in registry.items() if k in kinds or e.always}
