"""Console logs with a cap: the log writer (a process of its own, as an instance's stdout and
stderr reach it) stamps and rotates; readers tail across the rotated files and follow the
log across rotations; `logs:` in the stack file sets the cap."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from unittest.mock import ANY

import pytest

from rackfire import streaming
from rackfire.agent.logfile import LogFile
from rackfire.errors import SpecError
from rackfire.model import logs
from rackfire.model.instance import Exit, InstanceKey
from rackfire.model.logs import parse, rotated
from rackfire.model.stack import MAX_LOG_FILES, LogLimits
from rackfire.runtime import logshim, logwriter
from rackfire.runtime.layout import InstanceDir, list_instance_dirs, remove_instance_dir
from rackfire.runtime.logshim import RotatingLog, encode, timestamp
from rackfire.spec import load_stack_text
from rackfire.streaming import Display

KEY = InstanceKey("shop", "web", 0)
STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
CAP = LogLimits(max_size=64 * 1024, max_files=3)
PER_FILE = CAP.max_size // len(encode(timestamp(0), b"stdout", b"line 000000"))


def files_of(log: Path) -> list[Path]:
    return [p for i in range(10) if (p := rotated(log, i)).exists()]


def numbered(first: int, last: int) -> list[bytes]:
    return [encode(timestamp(time.time_ns()), b"stdout", b"line %06d" % i)
            for i in range(first, last)]


def numbers(text: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"line (\d+)", text)]


def history(lf: LogFile, tail: int) -> bytes:
    """Its last `tail` records (0: all), as they are."""
    lf.begin(tail)
    return b"".join(lf.history())


def launch(log: Path, limits: LogLimits, argv: tuple[str, ...],
           banner: str = "") -> logwriter.Writer:
    """The real log writer, starting `argv` writing into it, as a runtime does."""
    writer = logwriter.launch(log, limits, banner, logwriter.Launch(argv, {}))
    assert writer.main is not None, writer.error
    return writer


def py(text: str) -> tuple[str, ...]:
    return (sys.executable, "-c", text)


def ended(writer: logwriter.Writer, log: Path, timeout: float = 60) -> int | None:
    """Wait for the run and its writer to end: the run's exit code, as the writer saw it."""
    assert writer.wait(timeout)  # it ends when the command's end closes the pipes
    exit = logwriter.read_exit(log, writer.main)
    assert exit is not None
    return exit.code


def run_writer(log: Path, limits: LogLimits, text: str) -> float:
    """Start the real log writer and a command writing into it, as a runtime does; wait for
    both to finish. Returns how long it took."""
    start = time.monotonic()
    writer = launch(log, limits, py(text), "--- rackfire: starting test")
    assert ended(writer, log) == 0
    return time.monotonic() - start


def test_rotating_log_holds_its_cap(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    w = RotatingLog(str(log), CAP.max_size, CAP.max_files)
    for first in range(0, 60_000, 1000):  # ten times the cap, in batches
        w.write(numbered(first, first + 1000))
    w.close()
    files = files_of(log)
    assert [p.name for p in files] == ["console.log", "console.log.1", "console.log.2"]
    assert all(p.stat().st_size <= CAP.max_size for p in files)
    # Oldest first, the newest line last, and nothing missing in between.
    kept = numbers(b"".join(p.read_bytes() for p in reversed(files)))
    assert kept == list(range(kept[0], 60_000)) and len(kept) > 2 * PER_FILE


def test_rotating_log_one_file_and_lowered_limits(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    w = RotatingLog(str(log), 64 * 1024, 1)
    w.write(numbered(0, 20_000))
    assert files_of(log) == [log] and log.stat().st_size <= 64 * 1024
    w.close()
    w = RotatingLog(str(log), 64 * 1024, 4)
    w.write(numbered(0, 20_000))
    assert len(files_of(log)) == 4
    w.set_limits(64 * 1024, 2)  # lowered: the oldest files go at once
    assert len(files_of(log)) == 2
    w.close()


def test_writer_process_stamps_splits_and_rotates_a_fast_writer(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    # Ten times the cap as fast as Python writes, on stdout and stderr, one very long line,
    # and a last line without its newline.
    script = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "for i in range(0, 60000):\n"
        "    out.write(b'line %06d\\n' % i)\n"
        "out.flush()\n"
        "sys.stderr.write('to stderr\\n'); sys.stderr.flush()\n"
        f"out.write(b'x' * {logshim.MAX_LINE * 2 + 5} + b'\\n')\n"
        "out.write(b'no newline'); out.flush()\n")
    run_writer(log, CAP, script)
    files = files_of(log)
    assert len(files) == 3 and all(p.stat().st_size <= CAP.max_size for p in files)
    current = log.read_bytes().splitlines()
    records = [parse(line) for line in current]
    assert all(r.time is not None and STAMP.match(r.time) for r in records)
    assert [r.time for r in records] == sorted(r.time for r in records if r.time)
    assert records[-1].content == b"no newline" and not records[-1].partial
    every = [parse(line) for p in reversed(files) for line in p.read_bytes().splitlines()]
    assert any(r.stream == b"stderr" and r.content == b"to stderr" for r in every)
    parts = [r for r in every if r.content.startswith(b"xxx")]
    assert [r.partial for r in parts] == [True, True, False]
    shown = Display(b"").feed(b"".join(p.read_bytes() for p in reversed(files))).splitlines()
    assert b"x" * (logshim.MAX_LINE * 2 + 5) in shown and shown[-1] == b"no newline"
    assert logwriter.size(log) == sum(p.stat().st_size for p in files)


def test_the_writer_imports_little_and_runs_compiled() -> None:
    """One runs beside every instance: json, signal.py or contextlib (their enum, re,
    collections) would each cost it a megabyte and milliseconds of every start."""
    import subprocess

    code = ("import sys; before = set(sys.modules); "
            f"exec(compile(open({logshim.__file__!r}).read(), 'shim', 'exec'), "
            "{'__name__': 'shim'}); print(' '.join(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    assert not {"json", "signal", "contextlib", "enum", "re", "typing", "collections",
                "functools"} & set(out), out
    program = logwriter.program()
    if os.access(logwriter.COMPILED.parent, os.W_OK):  # root: the compiled form
        assert program.endswith(".pyc") and Path(program).parent == logwriter.COMPILED


def test_the_exit_is_recorded_after_what_the_run_wrote_before_it(tmp_path: Path) -> None:
    """A job's result is its last line: whoever sees the exit must find it in the log. A
    child keeps the pipes open, so the writer outlives the exit it records."""
    for i in range(10):
        log = tmp_path / str(i) / "console.log"
        log.parent.mkdir()
        writer = launch(log, LogLimits(10 << 20, 2), ("sh", "-c", (
            "sleep 5 & head -c 300000 /dev/zero | tr '\\0' x; echo; echo RESULT-LAST")))
        exit = wait_for_exit(log, writer)
        assert exit.code == 0
        assert b"RESULT-LAST" in log.read_bytes(), f"run {i}: the exit came before its output"
        os.killpg(writer.main or 0, signal.SIGKILL)  # its session: the child holding the pipes
        assert writer.wait(10)


def wait_for_exit(log: Path, writer: logwriter.Writer) -> Exit:
    deadline = time.monotonic() + 30
    while (exit := logwriter.read_exit(log, writer.main)) is None:  # looked at at once
        assert time.monotonic() < deadline, "no exit recorded"
    return exit


def test_writer_takes_new_limits_while_it_runs(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    script = (
        "import sys, time\n"
        "for i in range(40000): sys.stdout.write('line %06d\\n' % i)\n"
        "sys.stdout.flush(); time.sleep(2.5)\n"  # meanwhile the limits are lowered
        "for i in range(40000, 80000): sys.stdout.write('line %06d\\n' % i)\n")
    writer = launch(log, LogLimits(128 * 1024, 4), py(script))
    time.sleep(1.0)
    logwriter.write_limits(log, LogLimits(64 * 1024, 2))
    assert ended(writer, log, 30) == 0
    files = files_of(log)
    assert len(files) == 2 and all(p.stat().st_size <= 64 * 1024 for p in files)
    assert logshim.read_limits(str(tmp_path / "console.limits")) == (64 * 1024, 2)


def test_tail_and_history_read_across_rotated_files(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    w = RotatingLog(str(log), CAP.max_size, CAP.max_files)
    w.write(numbered(0, 12_000))  # three files
    w.close()
    lf = LogFile(log)
    on_disk = numbers(b"".join(p.read_bytes() for p in reversed(files_of(log))))
    assert numbers(history(lf, 0)) == on_disk
    in_current = len(log.read_bytes().splitlines())
    tail = numbers(history(lf, in_current + 10))
    assert tail == list(range(12_000 - in_current - 10, 12_000))  # .1's last lines too
    # The records as they are (what a host streams, for the server to merge and show),
    # and as shown with stamps on.
    lf.begin(1)
    record = b"".join(lf.history())
    assert parse(record).content == b"line 011999"
    line = Display(b"w | ", timestamps=True).feed(record)
    assert re.fullmatch(rb"w \| \S+Z line 011999\n", line), line
    lf.close()


def test_follow_across_rotations(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    w = RotatingLog(str(log), CAP.max_size, CAP.max_files)
    w.write(numbered(0, 10))
    lf = LogFile(log)
    assert numbers(history(lf, 5)) == list(range(5, 10))
    seen: list[int] = []
    # A rotation between two polls: the rest of the old file, then the new one.
    w.write(numbered(10, PER_FILE))
    seen += numbers(lf.poll())
    # Two rotations between polls (the old file is .2 now): nothing is lost.
    w.write(numbered(PER_FILE, 3 * PER_FILE))
    seen += numbers(lf.poll())
    assert seen == list(range(10, 3 * PER_FILE))
    # Ten times the cap between polls: the files dropped meanwhile are lost, but what is
    # read is in order, without repeats, up to the newest line.
    w.write(numbered(11_000, 80_000))
    while data := lf.poll():
        seen += numbers(data)
    assert seen == sorted(set(seen)) and seen[-1] == 79_999
    assert set(range(80_000 - PER_FILE, 80_000)) <= set(seen)
    w.close()
    lf.close()


def test_follow_the_real_writer_across_rotations(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    script = (
        "import sys, time\n"
        "for i in range(150):\n"
        "    sys.stdout.write(''.join('line %06d\\n' % n for n in range(i * 100, i * 100 + 100)))\n"
        "    sys.stdout.flush(); time.sleep(0.02)\n")
    writer = launch(log, CAP, py(script))
    lf = LogFile(log)
    seen: list[int] = []
    while not writer.wait(0):
        seen += numbers(lf.poll())
        time.sleep(0.05)
    seen += numbers(lf.poll())
    lf.close()
    assert ended(writer, log) == 0
    # Four times the cap, polled often enough: every line, once, in order.
    assert seen == list(range(15_000))
    assert len(files_of(log)) == 3


def test_the_writer_writes_the_format_readers_read() -> None:
    # The writer process imports nothing of rackfire (it runs beside every instance).
    assert logshim.MAX_FILES == MAX_LOG_FILES
    ns = time.time_ns()
    assert STAMP.match(timestamp(ns)) and timestamp(ns) < timestamp(ns + 1)
    record = encode(timestamp(ns), b"stderr", b"a b  c", partial=True)
    assert parse(record) == logs.Record(timestamp(ns), b"stderr", True, b"a b  c")
    assert parse(encode(timestamp(ns), b"stdout", b"")) == logs.Record(
        timestamp(ns), b"stdout", False, b"")


def test_writer_memory_is_small(tmp_path: Path) -> None:
    # One runs beside every instance: what it holds of its own must stay small.
    writer = launch(tmp_path / "console.log", CAP, ("sleep", "2"), "--- rackfire: starting")
    try:
        wait_until = time.monotonic() + 10
        while not (tmp_path / "console.log").exists() and time.monotonic() < wait_until:
            time.sleep(0.05)  # it wrote its banner: it is past its imports
        status = Path(f"/proc/{writer.pid}/status").read_text().splitlines()
        anon = int(next(line.split()[1] for line in status if line.startswith("RssAnon:")))
        assert anon < 6 * 1024, f"{anon} kB of its own beside each instance"
    finally:
        writer.wait(10)


def test_display_joins_partial_records_and_passes_old_logs() -> None:
    ts = timestamp(1_700_000_000_123_456_789)
    assert ts == b"2023-11-14T22:13:20.123456789Z"
    records = (encode(ts, b"stdout", b"abc", partial=True) + encode(ts, b"stderr", b"err")
               + encode(ts, b"stdout", b"def"))
    # A partial record goes on with its own stream's next record, not the other stream's:
    # that stream's line is shown first, whole.
    assert Display(b"").feed(records) == b"err\nabcdef\n"
    assert Display(b"w | ", timestamps=True).feed(records) == (
        b"w | " + ts + b" err\nw | " + ts + b" abcdef\n")
    assert Display(b"").feed(b"an old untimed line\n") == b"an old untimed line\n"
    assert Display(b"", raw=True).feed(records) == records


def test_display_shows_a_stale_partial_line_and_ends_it_at_the_other_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ts = timestamp(1_700_000_000_123_456_789)
    d = Display(b"", timestamps=True)
    assert d.feed(encode(ts, b"stdout", b"Password: ", partial=True)) == b""
    monkeypatch.setattr(streaming, "PARTIAL_FLUSH", 0.0)
    time.sleep(0.01)
    assert d.flush_if_stale() == ts + b" Password: "  # a prompt: shown as far as it goes
    # The other stream's line starts a line of its own; the prompt's rest, unstamped, after.
    assert d.feed(encode(ts, b"stderr", b"warning")) == b"\n" + ts + b" warning\n"
    assert d.feed(encode(ts, b"stdout", b"ok")) == ts + b" ok\n"
    d = Display(b"")
    d.feed(encode(ts, b"stdout", b"no end", partial=True))
    assert d.flush() == b"no end"  # the end of a history: what is held is shown


def test_a_removed_dir_is_not_made_again_by_its_draining_writer(tmp_path: Path) -> None:
    # A process of the instance outlives its stop and writes on: its writer rotates all
    # along while destroy removes the dir (a big one, so the rmtree takes a while).
    base = tmp_path / "instances"
    d = InstanceDir(base / KEY.id)
    (d.root / "work").mkdir(parents=True)
    d.meta.write_text("{}")
    for i in range(2000):
        (d.root / "work" / f"f{i}").write_bytes(b"")
    writer = launch(d.log, CAP,
                    py("import sys\nwhile True: sys.stdout.write('line 000000\\n' * 100)\n"))
    assert writer.main is not None
    try:
        deadline = time.monotonic() + 10
        while not rotated(d.log, 2).exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # rotating
        remove_instance_dir(d)
        time.sleep(0.3)  # and rotating on
    finally:
        os.kill(writer.main, signal.SIGKILL)
        assert writer.wait(10)
    assert list(base.iterdir()) == [] and list_instance_dirs(base) == []


def test_writer_is_reaped_when_it_ends_and_gets_no_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RACKFIRE_TOKEN", "s3cret-token")
    writer = logwriter.launch(tmp_path / "console.log", CAP, "", logwriter.Launch(
        ("sh", "-c", 'sleep 1; test "$SECRET" = s3cret-env'), {"SECRET": "s3cret-env"}))
    environ = Path(f"/proc/{writer.pid}/environ").read_bytes()
    cmdline = Path(f"/proc/{writer.pid}/cmdline").read_bytes()
    assert b"s3cret-token" not in environ and b"RACKFIRE" not in environ
    assert b"s3cret-env" not in environ + cmdline  # the run's env came in its request
    assert ended(writer, tmp_path / "console.log", 10) == 0  # and reached the run
    # Ended with its instance: collected at once, not left a zombie until the next start.
    deadline = time.monotonic() + 10
    while Path(f"/proc/{writer.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{writer.pid}").exists(), "left a zombie"
    assert writer.wait(0)


def test_a_writer_without_the_lock_neither_rotates_nor_prunes(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    lock_path = tmp_path / "console.lock"
    # The previous run's writer, still fed by a stray process of that run, holds the lock.
    previous = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(previous, fcntl.LOCK_EX)
    mine = os.open(lock_path, os.O_RDWR)
    assert not logshim.lock(mine, 0.1)
    w = RotatingLog(str(log), CAP.max_size, 2, rotating=False)
    rotated(log, 5).write_bytes(b"old\n")
    w.write(numbered(0, 3 * PER_FILE))  # past max_size: the other writer rotates, not this
    assert files_of(log) == [log, rotated(log, 5)]
    os.replace(log, rotated(log, 1))  # the other writer rotated: this one follows
    w.write(numbered(3 * PER_FILE, 3 * PER_FILE + 10))
    assert numbers(log.read_bytes()) == list(range(3 * PER_FILE, 3 * PER_FILE + 10))
    # Once the previous writer ends, it takes the lock and rotates and prunes again.
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    pumping = threading.Thread(target=logshim.pump,
                               args=({r_out: b"stdout", r_err: b"stderr"}, w, None, mine))
    pumping.start()
    try:
        os.close(previous)
        time.sleep(logshim.LIMITS_CHECK * 1.6)
        with os.fdopen(w_out, "wb") as out:
            out.write(b"".join(b"line %06d\n" % i for i in range(10_000, 10_000 + 3 * PER_FILE)))
    finally:
        os.close(w_err)
        pumping.join(10)
        w.close()
        os.close(mine)
    files = files_of(log)
    assert files == [log, rotated(log, 1)]
    assert all(p.stat().st_size <= CAP.max_size for p in files)


def test_logs_field_in_the_stack_file() -> None:
    base = "stack: s\nimages: {b: {from: host}}\nroles:\n  web:\n    image: b\n" \
           "    command: [sh]\n"
    spec = load_stack_text(base, "s.yaml")
    assert spec.roles[0].logs == LogLimits(10 * 1024 * 1024, 3)
    spec = load_stack_text(base + "    logs: {max_size: 2M, max_files: 5}\n", "s.yaml")
    assert spec.roles[0].logs == LogLimits(2 * 1024 * 1024, 5)
    with pytest.raises(SpecError) as e:
        load_stack_text(base + "    logs: {max_size: 1K, max_files: 0, keep: 3}\n", "s.yaml")
    got = sorted((p.line, p.field, p.message) for p in e.value.problems)
    assert got == [
        (7, "roles.web.logs.keep", "unknown key 'keep'; allowed: max_files, max_size"),
        (7, "roles.web.logs.max_files", "must be greater than or equal to 1, got 0"),
        (7, "roles.web.logs.max_size", "must be at least 64K, got '1K'"),
    ]


def test_size_counts_every_file(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    assert logwriter.size(log) is None
    log.write_bytes(b"a" * 10)
    rotated(log, 1).write_bytes(b"b" * 5)
    assert logwriter.size(log) == 15
    os.unlink(log)  # between a rotation's rename and its new file
    assert logwriter.size(log) == 5


def test_a_failed_start_is_told_without_stamps(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    script = "import sys; sys.stderr.write('runc: no such file: /bin/nope\\n')"
    run_writer(log, CAP, script)
    assert logwriter.tail_text(log, 2) == (
        "--- rackfire: starting test | runc: no such file: /bin/nope")


def test_the_writer_records_how_its_run_ended(tmp_path: Path) -> None:
    # It is the run's reaper: the exit code, or the signal that killed it.
    log = tmp_path / "console.log"
    assert ended(launch(log, CAP, ("sh", "-c", "exit 3")), log, 10) == 3
    writer = launch(log, CAP, ("sleep", "30"))
    assert writer.main is not None and logwriter.read_exit(log, writer.main) is None
    os.kill(writer.main, signal.SIGKILL)
    assert writer.wait(10)
    assert logwriter.read_exit(log, writer.main) == Exit(None, signal.SIGKILL, ANY)
    # An earlier run's record is not this run's.
    assert logwriter.read_exit(log, writer.main + 1) is None


def test_a_run_that_cannot_start_says_why(tmp_path: Path) -> None:
    writer = logwriter.launch(tmp_path / "console.log", CAP, "",
                              logwriter.Launch(("/nonexistent/cmd",), {}))
    assert writer.main is None and "/nonexistent/cmd" in writer.error
    assert writer.wait(10)


def test_a_launcher_detaching_its_main_process(tmp_path: Path) -> None:
    # As `runc run --detach` does: the launcher exits at once, leaving the main process
    # (whose pid it wrote) orphaned; the writer, its subreaper, still sees it end.
    log, pid_file = tmp_path / "console.log", tmp_path / "init.pid"
    detach = f"sh -c 'sleep 0.5; echo done; exit 7' & echo $! > {pid_file}; exit 0"
    writer = logwriter.launch(log, CAP, "", logwriter.Launch(("sh", "-c", detach), {},
                                                             pid_file=pid_file))
    assert writer.rc == 0 and writer.main == int(pid_file.read_text())
    assert ended(writer, log, 10) == 7
    assert b"done" in log.read_bytes()
    failing = logwriter.launch(log, CAP, "", logwriter.Launch(("sh", "-c", "exit 4"), {},
                                                              pid_file=pid_file))
    assert failing.rc == 4 and failing.main is None


def test_the_run_gets_no_ignored_signals_of_the_writer(tmp_path: Path) -> None:
    # The writer ignores SIGHUP, SIGINT, SIGPIPE; a shell started ignoring one could not
    # even trap it (a reload by SIGHUP would never reach the instance).
    log = tmp_path / "console.log"
    trap = "trap 'exit 5' HUP; kill -HUP $$; sleep 5; exit 1"
    assert ended(launch(log, CAP, ("sh", "-c", trap)), log, 10) == 5
