"""`rackfire logs` and `rackfire exec`: the commands that stream. Logs are a chunked HTTP
response (httpx); exec is a websocket (see api/streams.py for its protocol). Both are
imported by the functions that use them: `--help` needs neither."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import termios
import threading
import tty as ttymod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rackfire.cli.common import Json, Url, parse_target
from rackfire.errors import PrereqError, RackfireError

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from rackfire.api.client import ServerUnreachable
    from rackfire.model.instance import InstanceKey

TargetArg = Annotated[str, typer.Argument(
    metavar="TARGET", help="a stack (shop), a role (shop/web) or an instance (shop/web/0, "
    "shop/web-0)")]
InstanceArg = Annotated[str, typer.Argument(
    metavar="INSTANCE", help="one instance: shop/web/0, shop/web-0 or shop.web.0")]
STDOUT, STDERR = 1, 2


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)
    app.command("exec")(exec_)


# logs -------------------------------------------------------------------------------------

def logs(
    target: TargetArg,
    follow: Annotated[bool, typer.Option("-f", "--follow",
                                         help="keep printing new lines (Ctrl-C ends)")] = False,
    tail: Annotated[int, typer.Option("-n", "--tail", min=0,
                                      help="the last N lines (of each instance); 0: all")] = 100,
    timestamps: Annotated[bool, typer.Option(
        "-t", "--timestamps", help="show when each line was written (RFC 3339, UTC)")] = False,
    json: Json = False,
    url: Url = None,
) -> None:
    """Print an instance's console log, or every instance's of a role or stack (each line
    prefixed with the instance's name; their history merged in time order). With --json,
    one object per line: {"instance": ..., "line": ...} (and "time" with -t)."""
    t = parse_target(target)
    params: dict[str, Any] = {"tail": tail, "follow": str(follow).lower(),
                              "timestamps": str(timestamps).lower()}
    if t.key is not None:
        path = f"/v1/instances/{t.key.id}/logs"
    elif t.role is not None:
        path, params["role"] = f"/v1/stacks/{t.stack}/logs", t.role
    else:
        path = f"/v1/stacks/{t.stack}/logs"
    chunks = _stream(_base_url(url), path, params)
    try:
        for chunk in (_json_lines(chunks, t.key.name if t.key else None, timestamps) if json
                      else chunks):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    except KeyboardInterrupt:
        return  # the way to end a follow: not an error
    except BrokenPipeError:  # `rackfire logs ... | head`
        _quiet_stdout()


def _json_lines(chunks: Iterator[bytes], instance: str | None,
                timestamps: bool) -> Iterator[bytes]:
    """Log text as JSON lines; a role's or stack's lines carry `name | ` prefixes."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (_json_line(raw, instance, timestamps) for raw in lines)
    if pending:  # the last line, written without its newline yet
        yield _json_line(pending, instance, timestamps)


def _json_line(raw: bytes, instance: str | None, timestamps: bool) -> bytes:
    text = raw.decode(errors="replace")
    if instance is None:
        prefix, _, text = text.partition(" | ")
        instance = prefix.strip()
    obj: dict[str, str | None] = {"instance": instance}
    if timestamps:
        when, _, rest = text.partition(" ")
        # A line from before logs were stamped has none.
        obj["time"], text = (when, rest) if when.endswith("Z") and "T" in when else (None, text)
    return json.dumps(obj | {"line": text}).encode() + b"\n"


def _stream(base: str, path: str, params: dict[str, Any]) -> Iterator[bytes]:
    import httpx

    from rackfire.api.client import ApiError

    got = False
    try:
        with httpx.Client(base_url=base, timeout=httpx.Timeout(10.0, read=None)) as http, \
                http.stream("GET", path, params=params, headers=_auth()) as r:
            if r.status_code >= 400:
                r.read()
                try:
                    body = r.json()
                except ValueError:
                    body = {"error": {"message": r.text}}
                raise ApiError(r.status_code, body)
            for chunk in r.iter_raw():
                got = True
                yield chunk
    except httpx.TransportError as e:
        if got:
            raise RackfireError(f"the connection to {base} was lost "
                                f"({e.__class__.__name__})") from None
        raise _unreachable(base, e) from None


# exec -------------------------------------------------------------------------------------

def exec_(
    instance: InstanceArg,
    command: Annotated[list[str], typer.Argument(
        metavar="CMD", help="the command and its arguments, after `--`")],
    interactive: Annotated[bool, typer.Option("-i", "--interactive",
                                              help="send this terminal's stdin")] = False,
    tty: Annotated[bool, typer.Option("-t", "--tty", help="give the command a terminal "
                                      "(`-it` for an interactive shell)")] = False,
    url: Url = None,
) -> None:
    """Run a command inside a running instance, with its environment; exits with the
    command's exit code."""
    from websockets.exceptions import ConnectionClosed

    key = parse_target(instance).key
    if key is None:
        raise PrereqError(f"{instance!r} is not one instance",
                          hint="exec runs in one instance: e.g. shop/web/0 or shop/web-0")
    local_tty = tty and sys.stdin.isatty()
    start: dict[str, Any] = {"argv": command, "tty": tty}
    if local_tty:
        size = os.get_terminal_size(sys.stdin.fileno())
        if size.lines and size.columns:
            start |= {"rows": size.lines, "cols": size.columns}
    base = _base_url(url)
    with _connect(base, key) as conn:
        # A refused request is answered and closed at once: its answer is read below.
        with contextlib.suppress(ConnectionClosed):
            conn.send(json.dumps(start))
            if interactive:
                threading.Thread(target=_forward_stdin, args=(conn,), daemon=True).start()
            else:
                conn.send(json.dumps({"eof": True}))
        try:
            with _raw_terminal(conn) if local_tty else contextlib.nullcontext():
                code = _receive(conn)
        except KeyboardInterrupt:
            code = 130  # leaving closes the websocket: the server kills the command
        except BrokenPipeError:
            _quiet_stdout()
            code = 141
    raise typer.Exit(code)


def _connect(base: str, key: InstanceKey) -> ClientConnection:
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
    from websockets.sync.client import connect

    ws_url = "ws" + base.removeprefix("http") + f"/v1/instances/{key.id}/exec"
    try:
        # proxy=None: the server is reached directly, whatever *_proxy says.
        return connect(ws_url, additional_headers=_auth(),
                       proxy=None, compression=None, open_timeout=10, max_size=None)
    except InvalidStatus as e:
        raise RackfireError(f"the server refused the exec websocket (HTTP "
                            f"{e.response.status_code})",
                            hint="is the server older than this CLI?") from None
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as e:
        raise _unreachable(base, e) from None


def _receive(conn: ClientConnection) -> int:
    from websockets.exceptions import ConnectionClosed

    from rackfire.api.client import ApiError

    try:
        for msg in conn:
            if isinstance(msg, bytes):
                out = sys.stdout if msg[:1] != bytes([STDERR]) else sys.stderr
                out.buffer.write(msg[1:])
                out.buffer.flush()
                continue
            data = json.loads(msg)
            if "exit" in data:
                return int(data["exit"])
            if "error" in data:
                status = 401 if data["error"].get("code") == "unauthorized" else 400
                raise ApiError(status, data)
    except ConnectionClosed as e:
        if e.rcvd is not None and e.rcvd.code == 4401:
            raise ApiError(401, {"error": {"code": "unauthorized",
                                           "message": "missing or wrong API token"}}) from None
    raise RackfireError("the server closed the connection before the command exited",
                        hint="see the server's log")


def _forward_stdin(conn: ClientConnection) -> None:
    from websockets.exceptions import ConnectionClosed

    fd = sys.stdin.fileno()
    # The command ending, or the connection, ends the copy: nothing more to send.
    with contextlib.suppress(OSError, ConnectionClosed):
        while data := os.read(fd, 1 << 16):
            conn.send(data)
        conn.send(json.dumps({"eof": True}))


@contextlib.contextmanager
def _raw_terminal(conn: ClientConnection) -> Iterator[None]:
    """Keys go to the remote terminal as typed (Ctrl-C included); a resize of this window
    resizes it."""
    from websockets.exceptions import ConnectionClosed

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def send_size() -> None:
        with contextlib.suppress(OSError, ConnectionClosed):
            size = os.get_terminal_size(fd)
            if size.lines and size.columns:
                conn.send(json.dumps({"resize": [size.lines, size.columns]}))

    def on_winch(_sig: int, _frame: object) -> None:
        # Not from the handler itself: it may interrupt a send holding the connection's lock.
        threading.Thread(target=send_size, daemon=True).start()

    previous = signal.signal(signal.SIGWINCH, on_winch)
    try:
        ttymod.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)


# shared -----------------------------------------------------------------------------------

def _base_url(url: str | None) -> str:
    from rackfire.api.client import DEFAULT_URL

    return (url or os.environ.get("RACKFIRE_URL") or DEFAULT_URL).rstrip("/")


def _auth() -> dict[str, str]:
    from rackfire.api.client import actor, read_token

    return {"Authorization": f"Bearer {read_token()}", "X-Rackfire-Actor": actor()}


def _unreachable(base: str, e: Exception) -> ServerUnreachable:
    from rackfire.api.client import ServerUnreachable

    return ServerUnreachable(
        f"no rackfire server answers at {base} ({e.__class__.__name__})",
        hint="start one with `rackfire server` (or use `rackfire up`), or set RACKFIRE_URL")


def _quiet_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the exit flush does not fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
