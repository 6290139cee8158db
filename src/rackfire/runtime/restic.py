"""The backup engine: a typed wrapper over the restic 0.14 CLI (Debian's `restic`).

restic stores what it is given deduplicated (content-defined chunks: a later backup of a
disk stores what changed), compressed (0.14 makes format-2 repositories: zstd where it pays)
and encrypted, in a repository that is a directory or a bucket
(`s3:http://host:port/bucket/prefix`); we never write a chunk store of our own. A backup
here is one stream (`backup --stdin`), fed chunk by chunk and never held whole in memory,
and read back the same way (`dump`).

Secrets: the repository's password, and the bucket's keys (Repository.env), reach restic only
through its environment (RESTIC_PASSWORD, AWS_*); the repository's address too
(RESTIC_REPOSITORY: a `rest:` URL may carry a password), so argv holds none. A Repository
prints as its address with any password in it masked, and every message this module raises
has been through `Repository.redact`, so restic's own words cannot leak one either.

Every call has a deadline. restic gives up at once when it cannot reach a repository at
all (its first request, for the config, is not retried), but once it has reached it, a
backend that fails is retried for minutes per request (0.14 has no option to bound that):
a repository lost mid-backup is bounded only by the deadline, at which restic is
interrupted (it saves no snapshot and drops its lock), then killed GRACE seconds later if
it is still retrying (its lock then stays, stale: see below).

Locks: restic locks the repository for every write (backup: shared; forget --prune and
check: exclusive). A restic killed outright leaves its lock behind, and an exclusive lock
left so blocks every later backup. forget and check clear stale locks (restic's `unlock`:
those of dead processes of this host, or not refreshed for 30 minutes) and retry once;
`unlock()` is there for a caller whose backup was refused so.

restic 0.14 exits 1 for every failure, so errors are told apart by what it says on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from rackfire.errors import Conflict, ExecError, NotFound, PrereqError, RackfireError

RESTIC = "restic"
CHUNK = 1 << 20  # dump's read size
TIMEOUT = 120.0  # a call that moves metadata only: init, snapshots, unlock
DATA_TIMEOUT = 6 * 3600.0  # backup, dump, check, forget --prune: they move the data
GRACE = 10.0  # from the interrupt (restic drops its lock) to the kill

# restic's backends, as it tells a URL's scheme from a local path that holds a colon.
_SCHEMES = ("local", "sftp", "rest", "s3", "b2", "azure", "gs", "swift", "rclone")
# What restic is given of this process's environment: nothing of its RESTIC_* (a
# RESTIC_PASSWORD_COMMAND there would run), the proxy and CA settings of the host.
_PASS_ENV = ("PATH", "HOME", "TMPDIR", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
             "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SNAP_ID = re.compile(r"[0-9a-f]{8,64}")
# What restic (Go's net, the minio client) says of a backend it cannot reach: a short reason.
_UNREACHABLE = {"connection refused": "connection refused", "no such host": "no such host",
                "server misbehaving": "no such host", "i/o timeout": "timed out",
                "context deadline exceeded": "timed out",
                "network is unreachable": "network unreachable",
                "no route to host": "no route to host", "connection reset": "connection reset",
                "specified bucket does not exist": "no such bucket",
                "x509:": "its TLS certificate is not trusted", "tls:": "TLS failed"}
_DENIED = ("access denied", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch",
           "permission denied", "forbidden")


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each non-empty secret replaced by ***; the longest
    first, so a secret holding another is masked whole."""
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


@dataclass(frozen=True, slots=True, repr=False)
class Repository:
    """Where backups go. `url` is restic's: a path (`/srv/backup`, `local:/srv/backup`) or a
    backend URL (`s3:http://127.0.0.1:9000/bucket/prefix`). `env` is what the backend needs
    besides (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION): every value of
    it is treated as a secret."""

    url: str
    password: str
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.url or any(c in self.url for c in "\0\n\r"):
            raise PrereqError("a backup repository needs an address (a path or a URL)")
        if not self.password:
            raise PrereqError(f"backup repository {self}: the password is empty",
                              hint="restic encrypts with it: give one, and keep it")
        for name, _ in self.env:
            if not _ENV_NAME.fullmatch(name) or name.upper().startswith("RESTIC_"):
                raise PrereqError(f"backup repository {self}: {name!r} is not an environment "
                                  "variable it may set",
                                  hint="the address and password have fields of their own")

    def __repr__(self) -> str:
        return f"Repository({self.display_url!r})"

    def __str__(self) -> str:
        return self.display_url

    @property
    def display_url(self) -> str:
        """The address with the password of any `user:password@` in it masked."""
        pw = self._url_password()
        return self.url.replace(f":{pw}@", ":***@") if pw else self.url

    @property
    def local_path(self) -> Path | None:
        """The directory of a local repository; None for any other backend."""
        scheme, sep, rest = self.url.partition(":")
        if sep and scheme == "local":
            return Path(rest)
        if sep and scheme in _SCHEMES:
            return None
        return Path(self.url)

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self._url_password(), *(v for _, v in self.env))
                     if s)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets())

    def _url_password(self) -> str:
        _, sep, rest = self.url.partition(":")
        if not sep or "://" not in rest:
            return ""
        try:
            return urlsplit(rest).password or ""
        except ValueError:
            return ""


@dataclass(frozen=True, slots=True)
class Snap:
    """One snapshot in a repository, as `restic snapshots` lists it."""

    id: str
    short_id: str
    time: float  # epoch seconds
    tags: tuple[str, ...]
    paths: tuple[str, ...]
    host: str


@dataclass(frozen=True, slots=True)
class Keep:
    """A retention policy: the last N snapshots, and the newest of each of the last N
    hours, days, weeks and months (restic's --keep-*); 0 leaves a rule out."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self) -> None:
        if any(n < 0 for n in self._rules().values()):
            raise PrereqError(f"a keep policy counts snapshots: {self} has a negative count")

    def _rules(self) -> dict[str, int]:
        return {"last": self.last, "hourly": self.hourly, "daily": self.daily,
                "weekly": self.weekly, "monthly": self.monthly}

    def args(self) -> list[str]:
        return [f"--keep-{rule}={n}" for rule, n in self._rules().items() if n > 0]


class Restic:
    """restic over one repository. Stateless between calls (each is one restic process),
    so one instance serves several threads; restic's locks order their writes."""

    def __init__(self, repo: Repository, cache_dir: Path, *, binary: str = RESTIC,
                 timeout: float = TIMEOUT, data_timeout: float = DATA_TIMEOUT) -> None:
        self.repo = repo
        self.cache_dir = cache_dir
        self.binary = binary
        self.timeout = timeout
        self.data_timeout = data_timeout

    def __repr__(self) -> str:
        return f"Restic({self.repo!r})"

    # -- the calls -------------------------------------------------------------------

    def init(self) -> bool:
        """Make the repository if there is none; True if this call made it. An existing
        one is fine if the password opens it (a wrong one raises, as everywhere). Where it
        goes must exist: a directory's parent, a bucket (restic would make either; a
        mistyped name would then quietly hold the backups)."""
        local = self.repo.local_path
        if local is not None and not local.parent.is_dir():
            # restic would make every missing directory: a backup volume not mounted would
            # silently become a repository on the root disk.
            raise PrereqError(f"backup repository {self.repo} is unreachable: no such "
                              f"directory {local.parent}",
                              hint="make (or mount) the directory the repository goes in")
        if local is None or local.exists():
            try:
                self._run(["cat", "config", "--no-lock"], what="open")
                return False
            except NotFound:
                pass
        proc = self._exec(["init"], timeout=self.timeout)
        if proc.returncode != 0:
            # Another caller made it in between.
            if re.search(r"config file already exists|already initialized", proc.stderr):
                return False
            raise self._error("init", proc.returncode, proc.stderr)
        return True

    def backup_stream(self, chunks: Iterable[bytes], filename: str, tags: Sequence[str],
                      host: str) -> str:
        """Back up the bytes of `chunks` as one file, /`filename`, in a new snapshot with
        `tags` and `host`; the snapshot's id. The chunks are written to restic as they
        come. If `chunks` raises, restic is interrupted and no snapshot is made."""
        _check_name(filename, "file name")
        _check_name(host, "host name")
        args = ["backup", "--stdin", f"--stdin-filename={filename}", f"--host={host}",
                *(f"--tag={t}" for t in _checked_tags(tags)), "--json", "-q"]
        sent = 0
        with _spool() as out, _spool() as err:
            proc = self._popen(args, stdin=subprocess.PIPE, stdout=out, stderr=err)
            assert proc.stdin is not None
            with _Deadline(proc, self.data_timeout) as deadline:
                try:
                    for chunk in chunks:
                        if not _write_all(proc.stdin, chunk):
                            break  # restic is gone: what it said tells why
                        sent += len(chunk)
                except BaseException:
                    # Before stdin closes: a cut stream must not reach restic's EOF and be
                    # saved as a whole one.
                    _stop(proc)
                    raise
                finally:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                rc = proc.wait()
            stdout, stderr = _read(out), _read(err)
        if deadline.fired:
            raise self._timeout("backup", self.data_timeout)
        if rc != 0:
            raise self._error("backup", rc, stderr)
        summary = _summary(stdout)
        if summary is None:
            raise ExecError(self.repo.redact(f"backup to {self.repo}: restic made no summary "
                                             f"of the snapshot it saved: {stdout[-300:]!r}"))
        short = str(summary.get("snapshot_id", ""))
        if summary.get("total_bytes_processed") != sent:
            with contextlib.suppress(RackfireError):
                self.remove([short])
            raise ExecError(f"backup to {self.repo}: restic read "
                            f"{summary.get('total_bytes_processed')} bytes of the {sent} sent")
        # 0.14's summary names the snapshot by its short id; the full one cannot become
        # ambiguous as the repository grows.
        found = self._snapshots(["--", short]) if _SNAP_ID.fullmatch(short) else []
        if len(found) != 1:
            raise ExecError(f"backup to {self.repo}: the snapshot it saved ({short!r}) is not "
                            "listed")
        return found[0].id

    def snapshots(self, tags: Sequence[str] = ()) -> list[Snap]:
        """The snapshots holding every one of `tags`, oldest first."""
        tag = ",".join(_checked_tags(tags))
        return self._snapshots([f"--tag={tag}"] if tag else [])

    def dump(self, snapshot_id: str, filename: str) -> Iterator[bytes]:
        """The bytes of /`filename` in the snapshot, in chunks of CHUNK bytes (the last one
        shorter). Raises NotFound for a snapshot or file not there, before any chunk; any
        failure later raises after the chunks restic sent: a caller writes them somewhere
        it discards unless the iterator ends without raising."""
        _check_id(snapshot_id)
        _check_name(filename, "file name")
        with _spool() as err:
            proc = self._popen(["dump", "-q", "--", snapshot_id, f"/{filename}"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
            assert proc.stdout is not None
            done = False
            try:
                with _Deadline(proc, self.data_timeout) as deadline:
                    while chunk := _fill(proc.stdout, CHUNK):
                        yield chunk
                    rc = proc.wait()
                    done = True
            finally:
                if not done:  # the consumer stopped early
                    _stop(proc)
                proc.stdout.close()
            stderr = _read(err)
        if deadline.fired:
            raise self._timeout("dump", self.data_timeout)
        if rc != 0:
            raise self._error("dump", rc, stderr, snapshot=snapshot_id)

    def check(self, read_data: bool = True) -> None:
        """Verify the repository: its structure, and with `read_data` every pack's content
        against its hash (reads the whole repository). ExecError naming what is wrong."""
        self._exclusive(["check", "-q", *(["--read-data"] if read_data else [])], what="check")

    def forget(self, keep: Keep, tags: Sequence[str] = (), group_by: str = "paths"
               ) -> list[str]:
        """Remove the snapshots (holding every one of `tags`) that `keep` does not keep,
        in each group of `group_by` (restic's: host, paths, tags, comma-separated), and the
        data only they held; the ids of those removed."""
        rules = keep.args()
        if not rules:
            raise PrereqError("a keep policy that keeps nothing would remove every snapshot",
                              hint="give at least one of last, hourly, daily, weekly, monthly")
        if not re.fullmatch(r"(host|paths|tags)(,(host|paths|tags))*", group_by):
            raise PrereqError(f"cannot group snapshots by {group_by!r}",
                              hint="host, paths, tags or a comma-separated mix")
        tag = ",".join(_checked_tags(tags))
        out = self._exclusive(["forget", "--json", "-q", "--prune", f"--group-by={group_by}",
                               *([f"--tag={tag}"] if tag else []), *rules], what="forget")
        removed: list[str] = []
        for group in _json_list(out, self.repo):
            if isinstance(group, dict):
                removed += [str(s["id"]) for s in group.get("remove") or ()]
        return removed

    def remove(self, ids: Iterable[str]) -> None:
        """Remove these snapshots and the data only they held. An id not there is not an
        error (restic skips it)."""
        ids = list(ids)
        for i in ids:
            _check_id(i)
        if ids:
            self._exclusive(["forget", "-q", "--prune", "--", *ids], what="remove")

    def unlock(self) -> None:
        """Remove stale locks: those of this host's dead restic processes, and any not
        refreshed for 30 minutes. A live restic's lock stays."""
        self._run(["unlock", "-q"], what="unlock")

    # -- running restic --------------------------------------------------------------

    def _snapshots(self, select: list[str]) -> list[Snap]:
        out = self._run(["snapshots", "--json", "--no-lock", *select], what="list snapshots")
        return sorted((_snap(s) for s in _json_list(out, self.repo)), key=lambda s: s.time)

    def _exclusive(self, args: list[str], *, what: str) -> str:
        try:
            return self._run(args, what=what, timeout=self.data_timeout)
        except Conflict:
            self.unlock()
            return self._run(args, what=what, timeout=self.data_timeout)

    def _run(self, args: list[str], *, what: str, timeout: float | None = None) -> str:
        t = self.timeout if timeout is None else timeout
        proc = self._exec(args, timeout=t)
        if proc.returncode != 0:
            raise self._error(what, proc.returncode, proc.stderr)
        return proc.stdout

    def _exec(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([self.binary, *self._common(), *args], env=self._env(),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise self._timeout(args[0], timeout) from None
        except FileNotFoundError:
            raise self._missing() from None

    def _popen(self, args: list[str], *, stdin: int, stdout: int | IO[bytes],
               stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        try:
            # Unbuffered: nothing of a chunk waits in this process when restic is stopped,
            # and closing its stdin never blocks on a flush.
            return subprocess.Popen([self.binary, *self._common(), *args], env=self._env(),
                                    stdin=stdin, stdout=stdout, stderr=stderr, bufsize=0,
                                    start_new_session=True)
        except FileNotFoundError:
            raise self._missing() from None

    def _common(self) -> list[str]:
        return [f"--cache-dir={self.cache_dir}"]

    def _env(self) -> dict[str, str]:
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(self.repo.env)
        env.update(RESTIC_REPOSITORY=self.repo.url, RESTIC_PASSWORD=self.repo.password,
                   LC_ALL="C")
        return env

    # -- what restic said, for an operator ---------------------------------------------

    def _error(self, what: str, rc: int, stderr: str, *, snapshot: str = "") -> RackfireError:
        """The error of a failed restic call, told from its stderr (restic 0.14 exits 1
        for nearly everything). Told from the raw text, then redacted whole: a secret
        masked first could hide the words looked for."""
        cls, message, hint = self._classify(what, rc, stderr, snapshot)
        return cls(self.repo.redact(message), hint=self.repo.redact(hint))

    def _classify(self, what: str, rc: int, text: str, snapshot: str
                  ) -> tuple[type[RackfireError], str, str]:
        low = text.lower()
        detail = _detail(text)
        repo = self.repo
        if "wrong password or no key found" in low:
            # Not Unauthorized: that code means a wrong rackfire credential to the API.
            return (PrereqError, f"backup repository {repo}: wrong password (no key of the "
                    "repository opens with it)",
                    "give the password the repository was initialised with")
        if "repository is already locked" in low:
            holder = re.search(r"locked (?:exclusively )?by (PID \d+ on \S+)", text)
            by = f" by {holder.group(1)}" if holder else ""
            return (Conflict, f"backup repository {repo} is locked{by}: another backup, "
                    "forget or check is running",
                    "try again when it is done; a lock left by a killed restic is removed by "
                    "an unlock")
        reason = next((r for phrase, r in _UNREACHABLE.items() if phrase in low), "")
        if reason:
            return (PrereqError, f"backup repository {repo} is unreachable: {reason} "
                    f"(restic: {detail})",
                    "check its address, that the endpoint is up and that the bucket exists")
        if "is there a repository at the following location" in low:
            local = repo.local_path
            if local is not None and not local.is_dir():
                return (PrereqError, f"backup repository {repo} is unreachable: no such "
                        f"directory {local}",
                        "make (or mount) the directory, then init the repository")
            return (NotFound, f"backup repository {repo} is not initialised (no restic "
                    "repository there)", "init it first")
        if any(s in low for s in _DENIED):
            return (PrereqError, f"backup repository {repo} refused access (restic: {detail})",
                    "check the bucket's keys, or the directory's owner and mode")
        if "no matching id found" in low:
            return (NotFound, f"no snapshot {snapshot or _quoted_id(text)} in backup "
                    f"repository {repo}", "list them with snapshots()")
        m = re.search(r'path "([^"]*)" not found in snapshot', text)
        if m:
            return (NotFound, f"no file {m.group(1)} in snapshot {snapshot} of backup "
                    f"repository {repo}", "")
        if rc < 0:
            return (ExecError, f"restic {what} on {repo} was killed (signal {-rc})",
                    "nothing was saved; a lock it left is removed by the next forget or check")
        if "repository contains errors" in low or what == "check":
            return (ExecError, f"backup repository {repo} failed its check: {_lines(text)}",
                    "the repository is damaged: back up anew to another one")
        return (ExecError, f"restic {what} on {repo} failed (exit {rc}): {detail}", "")

    def _timeout(self, what: str, seconds: float) -> ExecError:
        return ExecError(self.repo.redact(f"restic {what} on {self.repo} did not finish in "
                                          f"{seconds:g} s"),
                         hint="the repository may have become unreachable: restic retries a "
                              "failing backend for minutes")

    def _missing(self) -> PrereqError:
        return PrereqError(f"{self.binary} is not installed (the backup engine)",
                           hint="apt-get install restic")


# -- helpers -----------------------------------------------------------------------------


class _Deadline:
    """Interrupts a process when `seconds` have passed (restic then drops its lock), and
    kills it GRACE seconds later if it is still there."""

    def __init__(self, proc: subprocess.Popen[bytes], seconds: float) -> None:
        self.proc = proc
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        self.fired = True
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, the way restic stops cleanly (its lock removed, no snapshot saved, even
    while it waits on its stdin); SIGKILL if it is still there GRACE seconds later. Its
    stdin is left open: an EOF before the signal would end the stream as a whole one."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    try:
        proc.wait(GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _write_all(pipe: IO[bytes], chunk: bytes) -> bool:
    """Write all of `chunk` (an unbuffered pipe may take part of it); False if the reader
    is gone."""
    view = memoryview(chunk)
    try:
        while view:
            n = pipe.write(view)
            view = view[n or 0:]
    except BrokenPipeError:
        return False
    return True


def _fill(pipe: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes, fewer only at the end (an unbuffered pipe gives 64 KiB at most
    per read)."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size and (n := pipe.readinto(view[got:])):  # type: ignore[attr-defined]
        got += n
    view.release()
    del buf[got:]
    return bytes(buf)


@contextlib.contextmanager
def _spool() -> Iterator[IO[bytes]]:
    # A file, not a pipe: nothing to drain while we write to restic's stdin.
    with tempfile.TemporaryFile() as f:
        yield f


def _read(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def _summary(stdout: str) -> dict[str, object] | None:
    for line in reversed(stdout.splitlines()):
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if isinstance(msg, dict) and msg.get("message_type") == "summary":
                return msg
    return None


def _json_list(stdout: str, repo: Repository) -> list[object]:
    """The JSON array restic printed (forget may print a line of text after it)."""
    for line in stdout.splitlines():
        if line.startswith("["):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, list):
                return value
    if stdout.strip() in ("", "null"):
        return []
    raise ExecError(repo.redact(f"restic printed no JSON list: {stdout[:200]!r}"))


def _snap(s: object) -> Snap:
    if not isinstance(s, dict):
        raise ExecError(f"restic listed a snapshot as {s!r}")
    return Snap(id=str(s["id"]), short_id=str(s.get("short_id") or s["id"][:8]),
                time=_epoch(str(s["time"])), tags=tuple(s.get("tags") or ()),
                paths=tuple(s.get("paths") or ()), host=str(s.get("hostname", "")))


def _epoch(stamp: str) -> float:
    # Go prints nanoseconds; datetime takes microseconds at most.
    m = re.fullmatch(r"(.+?)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    if m is None:
        raise ExecError(f"restic gave a snapshot the time {stamp!r}")
    base, frac, zone = m.groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(base + (frac or "")[:7] + zone).timestamp()


def _checked_tags(tags: Sequence[str]) -> list[str]:
    if isinstance(tags, str):
        raise PrereqError("tags are a list of strings, not one string")
    for t in tags:
        # restic splits --tag at commas and takes nothing blank
        if not t or "," in t or t != t.strip() or any(ord(c) < 32 for c in t):
            raise PrereqError(f"{t!r} cannot be a backup tag",
                              hint="no commas, blanks at its ends or control characters")
    return list(tags)


def _check_name(name: str, what: str) -> None:
    if (not name or "/" in name or name in (".", "..") or name.startswith("-")
            or any(ord(c) < 32 for c in name)):
        raise PrereqError(f"{name!r} cannot be a backup's {what}",
                          hint="a plain name: no slash, not starting with '-'")


def _check_id(snapshot_id: str) -> None:
    if not _SNAP_ID.fullmatch(snapshot_id):
        raise NotFound(f"{snapshot_id!r} is not a snapshot id",
                       hint="a snapshot id is 8 to 64 hexadecimal digits")


def _lines(text: str, n: int = 5) -> str:
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in kept if not ln.startswith(("using temporary cache", "create exclusive",
                                                    "load indexes", "check all", "check snap",
                                                    "read all data", "no errors"))]
    return "; ".join(kept[:n])[:800]


def _detail(text: str) -> str:
    """restic's own reason, the Fatal line mostly, without its 'Fatal: ' or the question
    it adds ('Is there a repository at the following location?' and the address)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    fatal = [ln.removeprefix("Fatal: ") for ln in lines if ln.startswith("Fatal: ")]
    pick = fatal[-1] if fatal else (lines[-1] if lines else "no message")
    return pick[:500]


def _quoted_id(text: str) -> str:
    m = re.search(r'prefix "([0-9a-f]+)"', text)
    return m.group(1) if m else "with that id"
