"""The CLI's checks of what a stack file's paths name (cli/stackfile.py): all reported at
once, where the file writes each, before anything is uploaded (so no server is needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest

from rackfire.cli import stackfile
from rackfire.errors import SpecError

STACK = """\
stack: s
images:
  base: {from: host}
  gone: {from: tarball, path: missing.tar}
  dir: {from: tarball, path: ./app-ok}
roles:
  missing: {image: base, command: [sh], app: ./nowhere}
  file: {image: base, command: [sh], app: notes.txt}
  leaky:
    image: base
    command: [sh]
    app: ./leaky
  linked: {image: base, command: [sh], app: ./link-to-dir}
  fine: {image: base, command: [sh], app: ./app-ok}
"""


class Untouched:
    """A client that must not be called: every problem is found before any upload."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the client was called ({name}) before the paths were checked")


def test_every_bad_path_is_reported_at_its_line_before_any_upload(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a dir\n")
    (tmp_path / "leaky").mkdir()
    os.symlink("../../etc/passwd", tmp_path / "leaky" / "passwd")
    (tmp_path / "app-ok").mkdir()
    (tmp_path / "app-ok" / "main.py").write_text("print('hi')\n")
    os.symlink("app-ok", tmp_path / "link-to-dir")
    f = tmp_path / "stack.yaml"
    f.write_text(STACK)
    with pytest.raises(SpecError) as e:
        stackfile.upload(cast(Any, Untouched()), f)
    found = [(p.line, p.field, p.message) for p in e.value.problems]
    assert [(line, field) for line, field, _ in found] == [
        (4, "images.gone.path"), (5, "images.dir.path"), (7, "roles.missing.app"),
        (8, "roles.file.app"), (12, "roles.leaky.app"), (13, "roles.linked.app")]
    messages = [m for _, _, m in found]
    assert f"{tmp_path / 'missing.tar'} does not exist" in messages[0]
    assert f"{tmp_path / 'app-ok'} is not a regular file" in messages[1]
    assert f"{tmp_path / 'nowhere'} does not exist" in messages[2]
    assert "relative to the stack file" in messages[2]  # the hint goes with it
    assert f"{tmp_path / 'notes.txt'} is not a directory" in messages[3]
    assert "symlink passwd -> ../../etc/passwd points outside it" in messages[4]
    assert "is a symlink" in messages[5]
    assert all(p.file == str(f) for p in e.value.problems)
