"""Reading console logs for `rackfire logs`: tails, and following a file that is appended
to, truncated or replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rackfire import streaming
from rackfire.model.instance import InstanceKey
from rackfire.streaming import LogFile, _tail_offset

KEY = InstanceKey("shop", "web", 0)


def history(path: Path, tail: int, prefix: bytes = b"") -> bytes:
    log = LogFile(KEY, path, prefix)
    try:
        return b"".join(log.history(tail, keep_partial=False))
    finally:
        log.close()


@pytest.mark.parametrize(("text", "n", "want"), [
    (b"", 3, b""),
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc", 2, b"b\nc"),  # a last line without its newline counts
    (b"a\nb\n", 5, b"a\nb\n"),
    (b"\n\nx\n", 2, b"\nx\n"),
])
def test_tail(tmp_path: Path, text: bytes, n: int, want: bytes) -> None:
    f = tmp_path / "log"
    f.write_bytes(text)
    assert history(f, n) == want
    with open(f, "rb") as fh:
        assert text[_tail_offset(fh, len(text), n):] == want


def test_tail_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "CHUNK", 7)  # lines straddle the blocks read backwards
    f = tmp_path / "log"
    f.write_bytes(b"".join(b"line%d\n" % i for i in range(100)))
    assert history(f, 3) == b"line97\nline98\nline99\n"
    assert history(f, 0).count(b"\n") == 100


def test_prefix_whole_lines_and_partial(tmp_path: Path) -> None:
    f = tmp_path / "log"
    f.write_bytes(b"one\ntwo\nthr")
    assert history(f, 0, b"w | ") == b"w | one\nw | two\nw | thr\n"
    log = LogFile(KEY, f, b"w | ")
    assert b"".join(log.history(0, keep_partial=True)) == b"w | one\nw | two\n"
    with open(f, "ab") as fh:
        fh.write(b"ee\nfour\n")
    assert log.poll() == b"w | three\nw | four\n"
    log.close()


def test_follow_appends_truncation_and_replacement(tmp_path: Path) -> None:
    f = tmp_path / "log"
    f.write_bytes(b"old\n")
    log = LogFile(KEY, f, b"")
    assert b"".join(log.history(10, keep_partial=True)) == b"old\n"
    assert log.poll() == b""
    with open(f, "ab") as fh:
        fh.write(b"new\n")
    assert log.poll() == b"new\n"
    f.write_bytes(b"x\n")  # truncated, then written: from its start again
    assert log.poll() == b"x\n"
    with open(f, "ab") as fh:
        fh.write(b"last of the old file\n")
    tmp = tmp_path / "log.new"
    tmp.write_bytes(b"fresh\n")
    os.replace(tmp, f)  # replaced: the rest of the old one, then the new one
    assert log.poll() == b"last of the old file\nfresh\n"
    f.unlink()
    assert log.poll() == b"" and log.missing()
    f.write_bytes(b"back\n")
    assert log.poll() == b"back\n" and not log.missing()
    log.close()
