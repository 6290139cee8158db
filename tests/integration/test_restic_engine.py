"""The backup engine (rackfire.runtime.restic) over the real restic, to a directory and to
an S3 bucket on a local moto server (tests/harness/s3.py): a stream backed up, listed,
read back byte for byte and verified; old snapshots forgotten; a cut stream saves nothing;
a wrong password, an unreachable or missing repository: a clear error, at once, with no
secret in it."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.harness.s3 import PORTS, S3Bucket

from rackfire.errors import ExecError, NotFound, PrereqError, RackfireError
from rackfire.runtime.restic import CHUNK, Keep, Repository, Restic

pytestmark = pytest.mark.skipif(shutil.which("restic") is None and os.environ.get("CI") != "true",
                                reason="needs restic (never skipped when CI=true)")

FILE = "disk.img"
TAGS = ["rackfire", "stack=shop", "role=db"]
FAST = 10.0  # seconds: how long "at once" may be, for a restic that opens its key (~0.5 s)


def stream(random: int, zeros: int, piece: int = 700_001) -> Iterator[bytes]:
    """`random` bytes of noise then `zeros` zeros, in pieces of an odd size."""
    noise = os.urandom(random) + bytes(zeros)
    for i in range(0, len(noise), piece):
        yield noise[i:i + piece]


def digest(chunks: Iterator[bytes]) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for c in chunks:
        assert 0 < len(c) <= CHUNK
        h.update(c)
        n += len(c)
    return h.hexdigest(), n


def secrets_of(repo: Repository) -> list[str]:
    return [repo.password, *(v for _, v in repo.env)]


def assert_no_secret(err: RackfireError, repo: Repository) -> None:
    for s in secrets_of(repo):
        assert s not in err.message and s not in err.hint and s not in str(err)


def closed_port() -> int:
    for port in reversed(PORTS):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise AssertionError("no closed port")


def s3_repo(b: S3Bucket, prefix: str = "rf", password: str = "") -> Repository:
    return Repository(f"s3:{b.endpoint}/{b.bucket}/{prefix}", password or os.urandom(12).hex(),
                      (("AWS_ACCESS_KEY_ID", b.key_id), ("AWS_SECRET_ACCESS_KEY", b.secret)))


@pytest.fixture(params=["dir", "s3"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    if request.param == "dir":
        return Repository(str(tmp_path / "repo"), os.urandom(12).hex())
    return s3_repo(request.getfixturevalue("s3_bucket"))


@pytest.fixture
def engine(repo: Repository, tmp_path: Path) -> Restic:
    return Restic(repo, tmp_path / "cache")


def test_backup_list_dump_check(engine: Restic) -> None:
    assert engine.init() is True
    assert engine.init() is False  # idempotent
    chunks = list(stream(3 << 20, 2 << 20))
    data = b"".join(chunks)
    want = hashlib.sha256(data).hexdigest()
    sid = engine.backup_stream(iter(chunks), FILE, TAGS, "host-a")
    assert len(sid) == 64

    [snap] = engine.snapshots(["stack=shop", "role=db"])
    assert (snap.id, snap.short_id) == (sid, sid[:8])
    assert snap.tags == tuple(TAGS) and snap.paths == (f"/{FILE}",) and snap.host == "host-a"
    assert abs(snap.time - time.time()) < 60
    assert engine.snapshots(["stack=shop", "role=app"]) == []  # every tag must match
    assert engine.snapshots() == [snap]

    assert digest(engine.dump(sid, FILE)) == (want, len(data))
    assert digest(engine.dump(snap.short_id, FILE)) == (want, len(data))
    engine.check(read_data=True)
    engine.check(read_data=False)


def test_forget_keeps_the_newest(engine: Restic) -> None:
    engine.init()
    ids = [engine.backup_stream(stream(64 << 10, 64 << 10), FILE, TAGS, "host-a")
           for _ in range(3)]
    other = engine.backup_stream(stream(64 << 10, 0), FILE, ["rackfire", "stack=blog"], "host-a")

    removed = engine.forget(Keep(last=1), tags=["stack=shop"])
    assert sorted(removed) == sorted(ids[:2])
    assert [s.id for s in engine.snapshots()] == [ids[2], other]  # another stack's stays
    assert engine.forget(Keep(last=1), tags=["stack=shop"]) == []
    with pytest.raises(PrereqError, match="keeps nothing"):
        engine.forget(Keep(), tags=["stack=shop"])

    engine.remove([ids[2], "0123abcd"])  # an id not there is no error
    assert [s.id for s in engine.snapshots()] == [other]
    engine.check(read_data=True)  # the pruned repository is whole


def test_a_cut_stream_saves_no_snapshot(engine: Restic) -> None:
    engine.init()

    def failing() -> Iterator[bytes]:
        yield os.urandom(2 << 20)
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="went away"):
        engine.backup_stream(failing(), FILE, TAGS, "host-a")
    assert engine.snapshots() == []
    # restic was stopped cleanly: no lock left to hold up the next exclusive call
    engine.check(read_data=False)


def test_a_killed_restic_leaves_no_obstacle(engine: Restic) -> None:
    """A restic killed outright (SIGKILL: the agent's host rebooted) leaves its lock; the
    next forget removes it as stale and goes on."""
    engine.init()
    keep = engine.backup_stream(stream(64 << 10, 0), FILE, TAGS, "host-a")

    def killing() -> Iterator[bytes]:
        yield os.urandom(1 << 20)
        [pid] = restic_children()
        os.kill(pid, signal.SIGKILL)
        for _ in range(50):  # restic's stdin goes with it
            yield bytes(1 << 20)

    with pytest.raises(ExecError, match="was killed"):
        engine.backup_stream(killing(), FILE, TAGS, "host-a")
    assert engine.forget(Keep(last=1), tags=["stack=shop"]) == []
    assert [s.id for s in engine.snapshots()] == [keep]


def restic_children() -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        comm, ppid = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()[1]
        if comm == "restic" and int(ppid) == os.getpid():
            found.append(int(p.name))
    return found


def test_secrets_are_never_in_argv(engine: Restic, repo: Repository) -> None:
    engine.init()
    seen: list[str] = []

    def watching() -> Iterator[bytes]:
        yield os.urandom(1 << 20)
        for pid in restic_children():
            seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode())
        yield bytes(1 << 20)

    engine.backup_stream(watching(), FILE, TAGS, "host-a")
    assert seen and all("backup" in argv for argv in seen)
    for argv in seen:
        for s in [*secrets_of(repo), repo.url]:
            assert s not in argv


def test_wrong_password(engine: Restic, repo: Repository, tmp_path: Path) -> None:
    engine.init()
    sid = engine.backup_stream(stream(64 << 10, 0), FILE, TAGS, "host-a")
    wrong = Repository(repo.url, "not-" + repo.password, repo.env)
    other = Restic(wrong, tmp_path / "cache2")
    calls = [other.init, other.snapshots, lambda: list(other.dump(sid, FILE)),
             lambda: other.backup_stream(stream(1 << 20, 0), FILE, TAGS, "host-a"),
             other.check]
    for call in calls:
        t = time.monotonic()
        with pytest.raises(PrereqError, match="wrong password") as e:
            call()
        assert time.monotonic() - t < FAST
        assert_no_secret(e.value, wrong)
        assert_no_secret(e.value, repo)
    assert [s.id for s in engine.snapshots()] == [sid]  # nothing was written


def test_dump_of_what_is_not_there(engine: Restic) -> None:
    engine.init()
    sid = engine.backup_stream(stream(64 << 10, 0), FILE, TAGS, "host-a")
    with pytest.raises(NotFound, match="no snapshot deadbeef"):
        list(engine.dump("deadbeef", FILE))
    with pytest.raises(NotFound, match=r"no file /other\.img"):
        list(engine.dump(sid, "other.img"))
    with pytest.raises(NotFound, match="not a snapshot id"):
        list(engine.dump("latest", FILE))


def test_not_initialised(repo: Repository, tmp_path: Path) -> None:
    engine = Restic(repo, tmp_path / "cache")
    if repo.local_path is not None:
        repo.local_path.mkdir()  # there, but empty
    with pytest.raises(NotFound, match="not initialised") as e:
        engine.snapshots()
    assert_no_secret(e.value, repo)


def test_unreachable_repositories(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    port = closed_port()
    closed = s3_repo(s3_bucket._replace(endpoint=f"http://127.0.0.1:{port}"))
    no_bucket = s3_repo(s3_bucket._replace(bucket="no-such-bucket"))
    missing = Repository(str(tmp_path / "missing" / "repo"), os.urandom(12).hex())
    cases = [(closed, "connection refused"), (no_bucket, "no such bucket"),
             (missing, "no such directory")]
    for repo, words in cases:
        engine = Restic(repo, tmp_path / "cache")
        for call in (engine.init, engine.snapshots,
                     lambda e=engine: e.backup_stream(stream(1 << 20, 0), FILE, TAGS, "h")):
            t = time.monotonic()
            with pytest.raises(PrereqError, match=f"unreachable: {words}") as e:
                call()
            assert time.monotonic() - t < FAST, (repo, call)
            assert_no_secret(e.value, repo)
    assert not (tmp_path / "missing").exists()  # init made no directory on the way
