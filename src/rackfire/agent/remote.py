"""A joined host's agent, seen from the controller: the call table (agent/table.py), each
call made over HTTP to the agent process on that host (agent/rpc.py) with the call's own
timeout; its disks, logs and exec as streams, which the API relays."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rackfire.agent.rpc import RemoteCall, disks_path, exec_path, logs_path, replica_path
from rackfire.agent.table import Epoch, TableClient
from rackfire.errors import AgentOffline
from rackfire.model.agent import ACTION, ExecStream, HostLink, LogStream, Stamp
from rackfire.model.instance import InstanceKey
from rackfire.streaming import HISTORY_HEADER

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


GONE_LOOK = 0.25  # seconds between looks, during a call, at whether its host is gone


REPLICA_IDLE = 20.0  # seconds a replica's stream may wait for its next bytes


class RemoteAgent(TableClient):
    """`gone()`: the host's lease lapsed (or it was fenced): a call under way is given up
    then (AgentOffline), not waited for until its timeout, which for a host that died with
    the connection open is all of it (no reset comes). It is asked every GONE_LOOK s of
    every call, so it must be cheap: the fleet's reads what the detector last saw
    (control/hosts.py `Lapses`), never the store."""

    def __init__(self, name: str, address: str, key: str, epoch: Epoch = lambda: 0,
                 gone: Callable[[], bool] = lambda: False) -> None:
        super().__init__(epoch)
        self.name = name
        self._call = RemoteCall(address, key)
        self._gone = gone
        # Each call on a thread of its own, so the caller can give it up; one given up
        # ends by its own timeout, its answer dropped.
        self._calls = ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"call-{name}")

    def close(self) -> None:
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._call.close()

    def _send(self, call: str, kwargs: dict[str, Any], stamp: Stamp) -> tuple[Any, str, int]:
        if self._gone():
            raise AgentOffline(f"host {self.name} is lost", hint="see `rackfire hosts`")
        future = self._calls.submit(self._call.stamped, call, stamp, **kwargs)
        while True:
            try:
                return future.result(timeout=GONE_LOOK)
            except FutureTimeout:
                if self._gone():
                    raise AgentOffline(f"host {self.name} was lost during {call}",
                                       hint="see `rackfire hosts`") from None

    # A cold migration's disks: streamed, not JSON calls (agent/rpc.py).

    def send_disks(self, key: InstanceKey) -> Iterator[bytes]:
        return self._call.download(disks_path(key))

    def receive_disks(self, key: InstanceKey, chunks: Iterable[bytes]) -> None:
        try:
            boot, done = self._call.upload(disks_path(key), chunks,
                                           Stamp(self._epoch(), ACTION.get()))
        except Exception:
            self._failed()
            raise
        self._saw(boot, done)

    # A shipment every few seconds: a host that stops answering must not hold it for long.
    def send_replica(self, key: InstanceKey, base: str) -> Iterator[bytes]:
        return self._call.download(f"{replica_path(key)}?base={quote(base)}",
                                   idle=REPLICA_IDLE)

    def receive_replica(self, key: InstanceKey, chunks: Iterable[bytes]) -> None:
        self._call.upload(replica_path(key), chunks, Stamp(self._epoch(), ACTION.get()),
                          idle=REPLICA_IDLE)

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


def _conforms(agent: RemoteAgent) -> HostLink:
    return agent  # mypy checks here that RemoteAgent is a whole HostLink
