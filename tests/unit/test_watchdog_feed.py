"""The watchdog's feed file and its loop, in this process, on plain child processes."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rackfire.agent import watchdog
from rackfire.agent.watchdog import DIR, FEED, FENCED, LOG, read_feed, watch, write_feed


def test_the_feed_round_trips_and_a_bad_one_is_no_feed(tmp_path: Path) -> None:
    target = {"kind": "runc", "root": "/run/x", "id": "s.db.0"}
    write_feed(tmp_path, 123.5, [target])
    assert read_feed(tmp_path / DIR / FEED) == (123.5, [target])
    write_feed(tmp_path, None, [])
    assert read_feed(tmp_path / DIR / FEED) == (None, [])
    assert [p.name for p in (tmp_path / DIR).iterdir()] == [FEED]  # no tmp file left
    for bad in ("", "{", '{"deadline": 1}', '{"deadline": "x", "targets": []}',
                '{"deadline": 1, "targets": [1]}'):
        (tmp_path / DIR / FEED).write_text(bad)
        assert read_feed(tmp_path / DIR / FEED) is None
    assert read_feed(tmp_path / "nothing.json") is None


def test_a_pid_file_naming_another_program_is_no_watchdog(tmp_path: Path) -> None:
    (tmp_path / DIR).mkdir()
    (tmp_path / DIR / "pid").write_text("1")
    assert watchdog.running_pid(tmp_path) is None
    assert not watchdog.stop(tmp_path)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "100"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(5)


def start_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def test_past_its_deadline_it_kills_each_target_once(tmp_path: Path,
                                                     sleeper: subprocess.Popen[bytes]) -> None:
    real = {"kind": "pid", "pid": sleeper.pid, "start": start_of(sleeper.pid)}
    reused = {"kind": "pid", "pid": sleeper.pid, "start": start_of(sleeper.pid) + 1}
    write_feed(tmp_path, time.monotonic() + 0.3, [reused])
    stop = threading.Event()
    loop = threading.Thread(target=watch, args=(tmp_path,),
                            kwargs={"poll": 0.02, "done": stop.is_set})
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while not (tmp_path / DIR / FENCED).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        fenced = json.loads((tmp_path / DIR / FENCED).read_text())
        assert [t["result"] for t in fenced["targets"]] == ["not running"]  # not its pid
        assert 0 <= fenced["late"] < 0.2
        assert sleeper.poll() is None
        time.sleep(0.1)  # polled again: the reused pid is not tried again
        assert (tmp_path / DIR / LOG).read_text().count("fenced") == 1
        # A hung agent's feed, the same deadline, now with the real one: killed at once.
        write_feed(tmp_path, fenced["deadline"], [reused, real])
        assert sleeper.wait(2) == -9
    finally:
        stop.set()
        loop.join(5)
    assert (tmp_path / DIR / LOG).read_text().count("fenced") == 2


def test_no_deadline_or_a_renewed_one_kills_nothing(tmp_path: Path,
                                                    sleeper: subprocess.Popen[bytes]) -> None:
    target = {"kind": "pid", "pid": sleeper.pid, "start": start_of(sleeper.pid)}
    write_feed(tmp_path, None, [target])
    stop = threading.Event()
    loop = threading.Thread(target=watch, args=(tmp_path,),
                            kwargs={"poll": 0.02, "done": stop.is_set})
    loop.start()
    try:
        for _ in range(10):
            write_feed(tmp_path, time.monotonic() + 0.2, [target])
            time.sleep(0.05)
        write_feed(tmp_path, None, [target])
        time.sleep(0.3)
    finally:
        stop.set()
        loop.join(5)
    assert sleeper.poll() is None
    assert not (tmp_path / DIR / FENCED).exists()


def test_a_target_with_its_own_deadline_goes_at_that_one(tmp_path: Path,
                                                        sleeper: subprocess.Popen[bytes]) -> None:
    """A floating address is released at the lease's end, before the feed's fence: a target
    with a deadline of its own goes then, the others wait for the feed's."""
    early = {"kind": "pid", "pid": sleeper.pid, "start": start_of(sleeper.pid),
             "deadline": time.monotonic() + 0.2}
    write_feed(tmp_path, time.monotonic() + 60, [early])
    stop = threading.Event()
    loop = threading.Thread(target=watch, args=(tmp_path,),
                            kwargs={"poll": 0.02, "done": stop.is_set})
    loop.start()
    try:
        assert sleeper.wait(2) == -9
    finally:
        stop.set()
        loop.join(5)
    fenced = json.loads((tmp_path / DIR / FENCED).read_text())
    assert [t["result"] for t in fenced["targets"]] == ["killed"]
    assert 0 <= fenced["late"] < 0.2
