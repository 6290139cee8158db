"""A joined host's agent, seen from the controller: the same Agent protocol, each call made
over HTTP to the agent process on that host (agent/rpc.py). The calls that need transfers
of their own are refused here, clearly: uploads of a local file, and exec and logs as a
local process or path. Those two are streams instead (`StreamSource`): the API relays an
instance's log and exec websocket from the agent (agent/rpc.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from rackfire.agent.rpc import RemoteCall, disks_path, exec_path, logs_path
from rackfire.errors import PrereqError
from rackfire.model.agent import (
    Agent,
    DiskMover,
    ExecHandle,
    ExecStream,
    HostCapacity,
    HostInfo,
    ImageSummary,
    InstanceStats,
    LogStream,
    PublishedPort,
    StreamSource,
)
from rackfire.model.host import HostFacts
from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceRequest, NetworkConfig
from rackfire.model.stack import DEFAULT_STOP_TIMEOUT, HealthSpec, ImageSpec, PortMap
from rackfire.streaming import HISTORY_HEADER

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


class RemoteAgent:
    def __init__(self, name: str, address: str, key: str) -> None:
        self.name = name
        self._call = RemoteCall(address, key)

    def close(self) -> None:
        self._call.close()

    def _c(self, call: str, **kwargs: Any) -> Any:
        return self._call(call, **kwargs)

    def info(self) -> HostInfo:
        return self._c("info")  # type: ignore[no-any-return]

    def observe(self, stack: str | None = None) -> list[InstanceFacts]:
        return self._c("observe", stack=stack)  # type: ignore[no-any-return]

    def create(self, req: InstanceRequest) -> None:
        self._c("create", req=req)

    def reconfigure(self, req: InstanceRequest) -> None:
        self._c("reconfigure", req=req)

    def restart(self, req: InstanceRequest) -> None:
        self._c("restart", req=req)

    def destroy(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self._c("destroy", key=key, stop_timeout=stop_timeout)

    def stop(self, key: InstanceKey, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self._c("stop", key=key, stop_timeout=stop_timeout)

    def resize(self, req: InstanceRequest) -> None:
        self._c("resize", req=req)

    def check_resize(self, req: InstanceRequest) -> None:
        self._c("check_resize", req=req)

    def reload(self, req: InstanceRequest) -> None:
        self._c("reload", req=req)

    def discard_disks(self, key: InstanceKey) -> None:
        self._c("discard_disks", key=key)

    def set_aside(self, key: InstanceKey) -> None:
        self._c("set_aside", key=key)

    # A cold migration's disks: streamed, not JSON calls (agent/rpc.py).

    def send_disks(self, key: InstanceKey) -> Iterator[bytes]:
        return self._call.download(disks_path(key))

    def receive_disks(self, key: InstanceKey, chunks: Iterable[bytes]) -> None:
        self._call.upload(disks_path(key), chunks)

    def stats(self, stack: str) -> list[InstanceStats]:
        return self._c("stats", stack=stack)  # type: ignore[no-any-return]

    def capacity(self) -> HostCapacity:
        return self._c("capacity")  # type: ignore[no-any-return]

    def facts(self, interval: float = 5.0) -> HostFacts:
        return self._c("facts", interval=interval)  # type: ignore[no-any-return]

    def ensure_network(self, net: NetworkConfig) -> None:
        self._c("ensure_network", net=net)

    def set_hosts(self, stack: str, entries: list[tuple[str, list[str]]]) -> None:
        self._c("set_hosts", stack=stack, entries=entries)

    def publish(self, stack: str, ports: list[PublishedPort]) -> None:
        self._c("publish", stack=stack, ports=ports)

    def busy_ports(self, stack: str, ports: list[PortMap]) -> list[PortMap]:
        return self._c("busy_ports", stack=stack, ports=ports)  # type: ignore[no-any-return]

    def teardown_stack(self, stack: str, keep_data: bool = False) -> None:
        self._c("teardown_stack", stack=stack, keep_data=keep_data)

    def ensure_release(self, source_digest: str, image_digest: str) -> ImageSummary:
        return self._c("ensure_release", source_digest=source_digest,  # type: ignore[no-any-return]
                       image_digest=image_digest)

    def probe(self, key: InstanceKey, ip: str, health: HealthSpec) -> tuple[bool, str]:
        return self._c("probe", key=key, ip=ip, health=health)  # type: ignore[no-any-return]

    def ensure_image(self, spec: ImageSpec) -> ImageSummary:
        return self._c("ensure_image", spec=spec)  # type: ignore[no-any-return]

    def check_image(self, spec: ImageSpec) -> None:
        self._c("check_image", spec=spec)

    def image(self, name: str) -> ImageSummary | None:
        return self._c("image", name=name)  # type: ignore[no-any-return]

    def images(self) -> list[ImageSummary]:
        return self._c("images")  # type: ignore[no-any-return]

    def remove_image(self, name: str) -> bool:
        return self._c("remove_image", name=name)  # type: ignore[no-any-return]

    def ensure_layer(self, digest: str) -> None:
        self._c("ensure_layer", digest=digest)

    def collect_layers(self) -> list[str]:
        return self._c("collect_layers")  # type: ignore[no-any-return]

    # Logs and exec as streams, relayed by the API.

    async def log_stream(self, key: InstanceKey, tail: int, follow: bool) -> LogStream:
        got = await self._call.open_download(
            logs_path(key), {"tail": tail, "follow": str(follow).lower()})
        try:
            history = int(got.headers.get(HISTORY_HEADER.lower(), "0"))
        except ValueError:
            history = 0  # only the order of history and new lines depends on it
        return LogStream(history, got.chunks, got.close)

    async def exec_stream(self, key: InstanceKey) -> ExecStream:
        return _RemoteExec(await self._call.open_websocket(exec_path(key)))

    # Not over a JSON call: they stream, or name a file on the controller's machine.

    def exec(self, key: InstanceKey, argv: list[str], tty: bool) -> ExecHandle:
        self._not_yet("exec")

    def log_path(self, key: InstanceKey) -> str:
        self._not_yet("logs")

    def store_source(self, tarball: str) -> str:
        self._not_yet("app sources")

    def import_image(self, name: str, tarball: str) -> ImageSummary:
        self._not_yet("image imports")

    def _not_yet(self, what: str) -> NoReturn:
        raise PrereqError(f"{what} on joined host {self.name} are not supported yet",
                          hint="they work on the server's own host")


class _RemoteExec:
    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn

    async def send(self, frame: str | bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            await self._conn.send(frame)

    async def receive(self) -> str | bytes | None:
        from websockets.exceptions import ConnectionClosed

        try:
            return await self._conn.recv()
        except ConnectionClosed:
            return None

    async def close(self) -> None:
        await self._conn.close()  # the agent sees its client gone: it kills the command


def _conforms(agent: RemoteAgent) -> Agent:
    return agent  # mypy checks here that RemoteAgent is a whole Agent


def _moves(agent: RemoteAgent) -> DiskMover:
    return agent  # and that it moves disks


def _streams(agent: RemoteAgent) -> StreamSource:
    return agent  # and that it streams logs and exec
