"""The runtime seam: one Protocol, capabilities as data, one contract suite for all.

A runtime is given neutral inputs: the request (what to run), a `RootFs` (the read-only
layers its root is made of, resolved by the agent from its image store) and an `Attachment`
(how it is on the stack's network, made by net/attach.py for the runtime's
`Capabilities.network`). What is the instance's own (its config layer, writable disk, log,
meta.json) the runtime keeps in its instance dir. Which runtimes a host has is
runtime/registry.py's; what each can do is its `caps` (model/runtime.py), which the agent
reports in its host's facts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rackfire.images.store import ImageInfo
from rackfire.model.agent import InstanceStats
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest
from rackfire.model.runtime import Capabilities
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, RuntimeKind
from rackfire.net import attach
from rackfire.net.attach import Attachment

__all__ = ["Attachment", "Capabilities", "DiskMover", "ExecHandle", "Fencer", "Layer", "RootFs",
           "Runtime", "inputs"]


@dataclass(slots=True)
class ExecHandle:
    """A command running inside an instance, on this host (the agent pumps its stdio:
    agent/execsession.py). With a tty, `master` is the pty's master fd (stdin and output
    both go through it); without, `proc` has stdin/stdout/stderr pipes."""

    proc: subprocess.Popen[bytes]
    master: int | None = None


@dataclass(frozen=True, slots=True)
class Layer:
    """A read-only layer of the image store: never written after it is committed."""

    digest: str
    path: Path  # its tree
    name: str = ""  # for messages; "" when no name points at it


@dataclass(frozen=True, slots=True)
class RootFs:
    """The read-only part of an instance's root: `layers` top first (its release layer, if
    the request names one, then its image's, last), the host paths the image binds read-only
    at the same place, and the stack's hosts file (rewritten in place, bound at /etc/hosts;
    its `resolv.conf` beside it)."""

    layers: tuple[Layer, ...]
    host_binds: tuple[str, ...]
    hosts_file: Path

    @property
    def image(self) -> Layer:
        return self.layers[-1]

    def layer(self, digest: str) -> Layer | None:
        return next((x for x in self.layers if x.digest == digest), None)

    @staticmethod
    def of(image: ImageInfo, hosts_file: Path, app: ImageInfo | None = None) -> RootFs:
        """From the store's layers: `app` (the release layer) above `image`."""
        layers = [Layer(i.digest, i.rootfs, i.name) for i in (app, image) if i is not None]
        return RootFs(tuple(layers), image.host_binds, hosts_file)


class Runtime(Protocol):
    kind: RuntimeKind
    caps: Capabilities

    def create(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        """Make every part of the instance and start it. Repairs a half-made earlier try.
        Refusals (what it cannot run, a release layer `rootfs` lacks) come before any part
        exists."""

    def reconfigure(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        """Stop it, swap its config layer for `req.files`, start it; same disk and IP."""

    def restart(self, req: InstanceRequest, rootfs: RootFs, net: Attachment) -> None:
        """Start a stopped instance again on its own disk."""

    def reload(self, req: InstanceRequest) -> None:
        """Write `req.files`' new contents where the running instance reads them (same
        paths), record `req.config_hash`, and have it re-read them (`req.reload`)."""

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop it gracefully, then remove every part (its attachment too); missing parts
        are fine."""

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM, SIGKILL after `stop_timeout`; keeps its disk, config and IP."""

    def resize(self, req: InstanceRequest) -> None:
        """Apply `req.resources` live (cpu, memory, pids; grow the disk online) and record
        `req`'s spec hash. Raises before any change if the disk would shrink."""

    def check_resize(self, req: InstanceRequest) -> object:
        """Raise PrereqError, before any change, if `resize(req)` could not be done live."""

    def stats(self, keys: list[InstanceKey]) -> list[InstanceStats]:
        """Measured usage of each of `keys` that exists."""

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        """Start `argv` inside the running instance, with its environment."""

    def observe(self) -> list[InstanceFacts]:
        """Every instance of this runtime on this host, as found on disk and in the kernel."""

    def netns(self, key: InstanceKey) -> str | None:
        """The network namespace to health-check in; None for the host's."""

    def log_path(self, key: InstanceKey) -> Path:
        """Where the instance's stdout and stderr go."""


@runtime_checkable
class Fencer(Protocol):
    """A runtime whose running instances the host's watchdog can kill without the agent
    (agent/watchdog.py)."""

    def fence_target(self, key: InstanceKey) -> dict[str, Any] | None:
        """How to kill the running instance: a JSON object for the watchdog; None if it
        does not run."""


@runtime_checkable
class DiskMover(Protocol):
    """What a runtime with `caps.cold_migrate` has besides: its stopped instances' disks out
    to another host, and back in with `InstanceRequest.adopt_disks` (create)."""

    def send_disks(self, key: InstanceKey) -> Iterator[bytes]:
        """The stopped instance's disks as a stream (runtime/diskcopy.py); refused, before
        any byte, while it runs."""

    def set_aside(self, key: InstanceKey) -> None:
        """Remove the stopped instance, keeping its disks as if received."""


def inputs(runtime: Runtime, req: InstanceRequest, image: ImageInfo, hosts_file: Path,
           app: ImageInfo | None = None) -> tuple[RootFs, Attachment]:
    """What `runtime` is given for `req`: its root's layers and its network attachment.
    `app`: the release layer `req.app_digest` names, if this host has it (a runtime refuses
    a request whose release layer is missing)."""
    return (RootFs.of(image, hosts_file, app if req.app_digest else None),
            attach.attachment(runtime.caps.network, req))
