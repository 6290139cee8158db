"""HAProxy's CSV statistics, read: rows, and the rates between two snapshots.

The text is what `show stat` answers on the stats socket, or what the stats page serves at
`/stats;csv`: a header `# pxname,svname,...` naming the columns (management guide, section
9.1 "CSV format"), then one line per frontend, backend, server and listener. Columns are
found by the header's names, not by position, so versions that add columns read the same.

Counters (stot, req_tot, hrsp_*) are totals since HAProxy started: a rate is the difference
of two snapshots over the time between them. A reload starts them at zero again, so a counter
that went down is taken as counted from zero (its new value is the delta); a reload that the
counter outgrew between two snapshots cannot be seen, and reads as a lower rate than true.

qtime, ctime, rtime and ttime are HAProxy's own running averages, in milliseconds, over about
the last 1024 requests (time queued, to connect, to the response's headers, in total). HAProxy
gives no percentile: latency_estimate() is that average total time, not a p95.

Pure: the caller reads the socket or the page and passes the text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from rackfire.errors import ExecError

HEADER = "# pxname,svname,"


class RowKind(StrEnum):
    """The `type` column: 0 frontend, 1 backend, 2 server, 3 listener."""

    FRONTEND = "frontend"
    BACKEND = "backend"
    SERVER = "server"
    LISTENER = "listener"


_KINDS = {"0": RowKind.FRONTEND, "1": RowKind.BACKEND, "2": RowKind.SERVER,
          "3": RowKind.LISTENER}
_COUNTS = ("scur", "stot", "rate", "req_tot", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx",
           "hrsp_5xx", "hrsp_other", "qcur")
_TIMES = ("qtime", "ctime", "rtime", "ttime")


@dataclass(frozen=True, slots=True)
class StatRow:
    """One line. A number HAProxy leaves empty for this kind of row (a frontend has no
    queue, a TCP proxy no HTTP responses) is None. Times in milliseconds."""

    proxy: str
    server: str  # FRONTEND, BACKEND, or the server's (listener's) name
    kind: RowKind
    status: str  # UP, DOWN, "UP 1/3" (going down), NOLB, MAINT, DRAIN, no check, OPEN...
    scur: int | None  # current sessions
    stot: int | None  # sessions (connections), total
    rate: int | None  # sessions in the last second
    req_tot: int | None  # HTTP requests, total
    hrsp_1xx: int | None
    hrsp_2xx: int | None
    hrsp_3xx: int | None
    hrsp_4xx: int | None
    hrsp_5xx: int | None
    hrsp_other: int | None
    qcur: int | None  # requests queued now (a backend's: not yet given a server)
    qtime: int | None
    ctime: int | None
    rtime: int | None
    ttime: int | None

    @property
    def serving(self) -> bool:
        """Takes new requests: UP (also "UP 1/3", still up), or up without a health check."""
        return self.status.startswith("UP") or self.status == "no check"


Snapshot = Mapping[tuple[str, str], StatRow]  # by (proxy, server)


def _split(line: str) -> list[str]:
    """One CSV line. HAProxy quotes a text field only if it holds a comma, a quote or a
    line break (a quote doubled inside); csv is not among the pure layer's modules."""
    fields, cur, quoted, i = [], [], False, 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == '"' and line[i + 1:i + 2] == '"':
                cur.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    fields.append("".join(cur))
    return fields


def _int(text: str, name: str, line: int) -> int | None:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ExecError(f"haproxy stats line {line}: {name} is not a number: {text!r}") from None


def parse_stat(text: str) -> dict[tuple[str, str], StatRow]:
    """The rows of `show stat` or `/stats;csv` output, by (proxy, server). ExecError if the
    text is not that (an error message from the socket, a page of HTML)."""
    lines = text.splitlines()
    start = next((n for n, ln in enumerate(lines) if ln.startswith(HEADER)), None)
    if start is None:
        first = lines[0][:80] if lines else ""
        raise ExecError(f"not HAProxy CSV stats (no '# pxname,svname,...' header): {first!r}")
    names = _split(lines[start][2:])
    col = {name: i for i, name in enumerate(names) if name}
    missing = [n for n in ("pxname", "svname", "status", "type", *_COUNTS, *_TIMES)
               if n not in col]
    if missing:
        raise ExecError(f"haproxy stats lack the columns {', '.join(missing)}")
    rows = {}
    for n, ln in enumerate(lines[start + 1:], start + 2):
        if not ln.strip() or ln.startswith("#"):
            continue
        f = _split(ln)
        cell = {name: f[i] if i < len(f) else "" for name, i in col.items()}
        kind = _KINDS.get(cell["type"])
        if kind is None:
            raise ExecError(f"haproxy stats line {n}: unknown type {cell['type']!r}")
        num = {k: _int(cell[k], k, n) for k in (*_COUNTS, *_TIMES)}
        row = StatRow(proxy=cell["pxname"], server=cell["svname"], kind=kind,
                      status=cell["status"], **num)
        rows[(row.proxy, row.server)] = row
    return rows


def counter_delta(before: int | None, after: int | None) -> int | None:
    """How much a total counter grew; after a reset (HAProxy reloaded) its new value."""
    if after is None:
        return None
    if before is None or after < before:
        return after
    return after - before


def _requests(before: StatRow | None, after: StatRow) -> int:
    """HTTP requests in the interval if HAProxy counts them for this row, else sessions
    (TCP mode)."""
    if after.req_tot is not None:
        return counter_delta(before.req_tot if before else None, after.req_tot) or 0
    return counter_delta(before.stot if before else None, after.stot) or 0


@dataclass(frozen=True, slots=True)
class ServerRate:
    server: str
    status: str
    serving: bool
    requests: int  # in the interval
    requests_per_second: float
    queue: int  # queued for this server now
    scur: int  # sessions now


@dataclass(frozen=True, slots=True)
class BackendRates:
    """A backend between two snapshots `seconds` apart."""

    proxy: str
    seconds: float
    requests: int  # in the interval (HTTP requests; sessions for a TCP backend)
    requests_per_second: float
    responses: tuple[tuple[str, int], ...]  # ("1xx", n) ... ("other", n) in the interval
    servers: tuple[ServerRate, ...]  # those in the later snapshot, by name
    serving: int  # servers taking requests now
    queue: int  # requests waiting now: the backend's own queue and its servers'
    qtime_ms: int | None  # HAProxy's running averages, last ~1024 requests
    rtime_ms: int | None
    ttime_ms: int | None

    @property
    def requests_per_instance(self) -> float | None:
        """Per serving server: the requests_per_instance metric (None: none serving)."""
        return self.requests_per_second / self.serving if self.serving else None

    @property
    def latency_estimate(self) -> float | None:
        """Seconds: HAProxy's average total time of the last ~1024 requests (ttime). Not a
        percentile (HAProxy has none): a p95 is higher, by how much depends on the spread."""
        return self.ttime_ms / 1000 if self.ttime_ms is not None else None


def backend_rates(before: Snapshot, after: Snapshot, proxy: str,
                  seconds: float) -> BackendRates:
    """`proxy`'s backend between two snapshots taken `seconds` apart. A server new in
    `after` (scaled out) counts from zero; one gone from it is left out. ExecError if
    `after` has no such backend or `seconds` is not above 0."""
    now = after.get((proxy, "BACKEND"))
    if now is None:
        raise ExecError(f"haproxy has no backend {proxy!r}")
    if not seconds > 0:
        raise ExecError(f"snapshots must be taken apart in time, not {seconds:g}s")
    was = before.get((proxy, "BACKEND"))

    def responses(k: str) -> int:
        field = f"hrsp_{k}"
        return counter_delta(getattr(was, field) if was else None, getattr(now, field)) or 0

    servers = []
    for (px, name), row in sorted(after.items()):
        if px != proxy or row.kind is not RowKind.SERVER:
            continue
        n = _requests(before.get((px, name)), row)
        servers.append(ServerRate(server=name, status=row.status, serving=row.serving,
                                  requests=n, requests_per_second=n / seconds,
                                  queue=row.qcur or 0, scur=row.scur or 0))
    total = _requests(was, now)
    return BackendRates(
        proxy=proxy, seconds=seconds, requests=total, requests_per_second=total / seconds,
        responses=tuple((k, responses(k)) for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other")),
        servers=tuple(servers), serving=sum(s.serving for s in servers),
        queue=(now.qcur or 0) + sum(s.queue for s in servers),
        qtime_ms=now.qtime, rtime_ms=now.rtime, ttime_ms=now.ttime)


def latency_estimate(rates: BackendRates) -> float | None:
    """The backend's latency in seconds, as well as HAProxy's stats tell it: the average
    total time of its last ~1024 requests (ttime). NOT a p95: HAProxy keeps no percentile;
    a true p95 needs the request log (%Tt) or the application's own histogram."""
    return rates.latency_estimate
