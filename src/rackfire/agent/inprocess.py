"""The server's own host through the same call table as a joined one, without the wire: each
call goes through its HostSide (epoch, count) in this process, its values as they are."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rackfire.agent.hostside import HostSide
from rackfire.agent.table import Epoch, TableClient
from rackfire.errors import PrereqError
from rackfire.model.agent import ACTION, ExecStream, HostLink, LogStream, Stamp, StreamSource
from rackfire.model.instance import InstanceKey


class InProcessLink(TableClient):
    def __init__(self, side: HostSide, streams: StreamSource | None = None,
                 epoch: Epoch = lambda: 1) -> None:
        super().__init__(epoch)
        self.side = side
        self._streams = streams

    def _send(self, call: str, kwargs: dict[str, Any], stamp: Stamp) -> tuple[Any, str, int]:
        result, done = self.side.call(call, kwargs, stamp)
        return result, self.side.boot, done

    def send_disks(self, key: InstanceKey) -> Iterator[bytes]:
        return self.side.send_disks(key)

    def receive_disks(self, key: InstanceKey, chunks: Iterable[bytes]) -> None:
        try:
            done = self.side.receive_disks(key, chunks, Stamp(self._epoch(), ACTION.get()))
        except Exception:
            self._failed()
            raise
        self._saw(self.side.boot, done)

    def send_replica(self, key: InstanceKey, base: str) -> Iterator[bytes]:
        return self.side.send_replica(key, base)

    def receive_replica(self, key: InstanceKey, chunks: Iterable[bytes]) -> None:
        self.side.receive_replica(key, chunks, Stamp(self._epoch(), ACTION.get()))

    async def log_stream(self, key: InstanceKey, tail: int, follow: bool) -> LogStream:
        return await self._source().log_stream(key, tail, follow)

    async def exec_stream(self, key: InstanceKey) -> ExecStream:
        return await self._source().exec_stream(key)

    def _source(self) -> StreamSource:
        if self._streams is None:
            raise PrereqError("this host serves no logs or exec")
        return self._streams


def _conforms(link: InProcessLink) -> HostLink:
    return link  # mypy checks here that the in-process link is a whole HostLink
