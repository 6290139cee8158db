"""What both ends of `rackfire logs` and `rackfire exec` share: the exec protocol (its first
message, the frames' tags, a websocket's bearer check and last frame), the log stream's
history header, and how console log records are shown (`Display`, the API's: a host sends
its log's records as they are on disk). The host halves (following a log file, pumping a
command's stdio) are the agent's: agent/logfile.py, agent/execsession.py.

Neutral by the dependency rule: it imports model and errors, never control, api or agent.

Exec protocol, on a websocket with `Authorization: Bearer <secret>` (checked by the route
after the handshake: a wrong one is closed with code 4401 after an `{"error": ...}` frame),
and the same frames in-process for the server's own host (agent/streams.py):

    client → {"argv": [...], "tty": bool, "rows": int?, "cols": int?}     first, JSON text
    client → binary frames: stdin; text {"eof": true}: close stdin (^D on a tty);
             text {"resize": [rows, cols]}: resize the tty
    server → binary frames: first byte the stream (1 stdout, 2 stderr; a tty is all 1),
             then the bytes; finally text {"exit": code} or {"error": {code, message, hint}},
             then close.

A client that goes away kills the command (its whole process group).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketState

from rackfire.errors import PrereqError
from rackfire.model.logs import Record
from rackfire.model.logs import parse as parse_record

POLL = 0.25  # how often a follow looks for new log lines
GONE_CHECK = 2.0  # how often a follow whose log is missing asks whether its instance is gone
PARTIAL_FLUSH = 2.0  # a prefixed line without its newline is shown after this long
CHUNK = 1 << 16
STDOUT, STDERR = 1, 2  # an output frame's first byte
HISTORY_HEADER = "X-Rackfire-History"  # a host's log stream: how many bytes are history


# logs -----------------------------------------------------------------------------------------

class Lines:
    """Prefixes whole lines (`web-0 | `); a line still without its newline after
    PARTIAL_FLUSH is shown as it is. Without a prefix bytes pass through as written."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self._partial = b""
        self._partial_since = 0.0

    def feed(self, data: bytes) -> bytes:
        if not self.prefix or not data:
            return data
        lines = (self._partial + data).split(b"\n")
        if lines[-1] and (len(lines) > 1 or not self._partial):  # a line begun just now
            self._partial_since = time.monotonic()
        self._partial = lines.pop()
        return b"".join(self.prefix + line + b"\n" for line in lines)

    def flush(self) -> bytes:
        if not self._partial:
            return b""
        line, self._partial = self._partial, b""
        return self.prefix + line + b"\n"

    def flush_if_stale(self) -> bytes:
        if self._partial and time.monotonic() - self._partial_since > PARTIAL_FLUSH:
            return self.flush()
        return b""


class _Held:
    """A stream's line so far, from its partial records."""

    __slots__ = ("since", "text", "time")

    def __init__(self, stamp: bytes | None) -> None:
        self.time = stamp  # its first part's
        self.text = bytearray()
        self.since = time.monotonic()


class Display:
    """Console log records (model/logs.py) as `rackfire logs` shows them: each line as
    written, after its stamp with `timestamps`; then prefixed as `Lines` does. Partial
    records are held and shown with the rest of their line, which the same stream's next
    records bring (the other stream's lines meanwhile are shown first); a line held past
    PARTIAL_FLUSH or HOLD is shown as far as it goes, and ended by the other stream's next
    line. `raw` passes the records through unchanged: an agent sends them so, and the
    server shows them."""

    HOLD = 1 << 20  # bytes of a line held at most

    def __init__(self, prefix: bytes, *, timestamps: bool = False, raw: bool = False) -> None:
        self.lines = Lines(prefix)
        self.timestamps = timestamps
        self.raw = raw
        self._rest = b""  # a record not yet whole (being written, or an old untimed log)
        self._rest_since = 0.0
        self._held: dict[bytes, _Held] = {}  # streams in the middle of a line, not shown
        self._open: bytes | None = None  # the stream whose line is shown in part

    @property
    def prefix(self) -> bytes:
        return self.lines.prefix

    @prefix.setter
    def prefix(self, value: bytes) -> None:
        self.lines.prefix = value

    def feed(self, data: bytes) -> bytes:
        if self.raw or not data:
            return data
        records = (self._rest + data).split(b"\n")
        if records[-1] and (len(records) > 1 or not self._rest):
            self._rest_since = time.monotonic()
        self._rest = records.pop()
        return self.lines.feed(b"".join(self.show(r) for r in records))

    def feed_record(self, r: Record, line: bytes) -> bytes:
        """`feed` for one record parsed already (`r` is `line` parsed)."""
        if self.raw or self._rest or not line.endswith(b"\n"):
            return self.feed(line)
        return self.lines.feed(self.show_record(r))

    def show(self, line: bytes) -> bytes:
        """One record (its newline stripped or not) as shown, before the prefix."""
        return self.show_record(parse_record(line))

    def show_record(self, r: Record) -> bytes:
        held = self._held.pop(r.stream, None) or _Held(r.time)
        held.text += r.content
        if r.partial and len(held.text) < self.HOLD:
            self._held[r.stream] = held
            return b""
        return self._show(r.stream, held, whole=not r.partial)

    def _show(self, stream: bytes, held: _Held, *, whole: bool) -> bytes:
        text = bytes(held.text) + (b"\n" if whole else b"")
        if self._open != stream:  # else the rest of a line shown in part: no stamp again
            if self.timestamps and held.time is not None:
                text = held.time + b" " + text
            if self._open is not None:
                text = b"\n" + text  # the other stream's line shown in part ends here
        self._open = None if whole else stream
        return text

    def _show_held(self, stale_only: bool) -> bytes:
        now = time.monotonic()
        out = b""
        for stream, held in list(self._held.items()):
            if not stale_only or now - held.since > PARTIAL_FLUSH:
                del self._held[stream]
                out += self._show(stream, held, whole=False)
        return out

    def end_of_file(self) -> bytes:
        """A file ended: a record left without its newline is whole (an untimed log)."""
        if self.raw or not self._rest:
            return b""
        rest, self._rest = self._rest, b""
        r = parse_record(rest)
        return self.lines.feed(self.show(rest) if r.time is not None else r.content)

    def flush(self) -> bytes:
        out = self.end_of_file()
        if not self.raw:
            out += self.lines.feed(self._show_held(stale_only=False))
        return out + self.lines.flush()

    def flush_if_stale(self) -> bytes:
        out = b""
        if self._rest and time.monotonic() - self._rest_since > PARTIAL_FLUSH:
            # An old untimed log's prompt: as it is (the next bytes go on with it).
            out, self._rest = self.lines.feed(parse_record(self._rest).content), b""
        if self._held:  # a prompt, a progress bar: shown as far as it goes
            out += self.lines.feed(self._show_held(stale_only=True))
        return out + self.lines.flush_if_stale()


def parsed(lines: list[bytes]) -> list[tuple[Record, bytes]]:
    """Whole records, their newlines stripped: each parsed, and with its newline."""
    return [(parse_record(line), line + b"\n") for line in lines]


# exec -----------------------------------------------------------------------------------------

class ExecStart(BaseModel):
    argv: list[str] = Field(min_length=1)
    tty: bool = False
    rows: int | None = Field(None, ge=0, le=65535)  # 0: unknown (a pty never sized)
    cols: int | None = Field(None, ge=0, le=65535)


def parse_start(text: str) -> ExecStart:
    try:
        return ExecStart.model_validate_json(text)
    except ValidationError as e:
        raise PrereqError("the first message must be JSON text "
                          '{"argv": [...], "tty": bool, "rows": int, "cols": int}: '
                          + "; ".join(str(x["msg"]) for x in e.errors())) from None


async def authorized(ws: WebSocket, secret: str, error: dict[str, Any]) -> bool:
    """Accept the websocket and check its handshake's bearer (the HTTP middleware and
    dependencies do not see websocket scopes); a wrong one gets `error` and code 4401."""
    await ws.accept()
    given = ws.headers.get("authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
        return True
    await finish(ws, {"error": error}, code=4401)
    return False


async def finish(ws: WebSocket, message: dict[str, Any], code: int = 1000) -> None:
    """Send the last frame and close; a client already gone is fine."""
    with contextlib.suppress(Exception):
        if ws.client_state is WebSocketState.CONNECTED:
            await ws.send_text(json.dumps(message))
            await ws.close(code)
