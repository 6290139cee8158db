"""A stack file as `plan`, `apply` and `up` send it: read and checked here, its paths
resolved against its own directory and what they name uploaded, so that the server (which
may run on another machine) is sent the text and digests and never reads a path of ours.

Every problem with a path (an `app:` dir missing, not a directory, a symlink in it leading
out; a tarball missing or not a file) is reported at once and where the file writes it, as
the loader reports the file's own problems, before anything is uploaded. An app dir is
uploaded each time (packed deterministically, it is the same source on the server); a
tarball only if the server does not keep one of that sha256 already.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rackfire.errors import PrereqError, SpecError, SpecProblem

if TYPE_CHECKING:
    from rackfire.api.client import Client
    from rackfire.model.stack import StackSpec
    from rackfire.spec.yamltree import Document


@dataclass(frozen=True, slots=True)
class SentStack:
    """What the API is sent for one stack file."""

    spec: StackSpec  # as loaded here: its paths absolute on this machine
    text: str
    filename: str
    sources: dict[str, str]  # role -> digest of its uploaded `app` dir
    tarballs: dict[str, str]  # image -> sha256 of its uploaded tarball


def read(file: Path) -> tuple[StackSpec, str]:
    """Validate locally first (the file's own line numbers, no server needed)."""
    from rackfire.spec import load_stack_file  # pydantic, YAML, Jinja: only where a file is read

    return load_stack_file(file), file.read_text()


def upload(client: Client, file: Path) -> SentStack:
    """Read the file, check what its paths name, upload it; nothing is uploaded if a path
    is wrong."""
    spec, text = read(file)
    with ExitStack() as stack:
        packs, tars, problems = {}, {}, []
        for role in spec.roles:
            if role.app is not None:
                try:
                    packs[role.name] = stack.enter_context(_packed(Path(role.app.path)))
                except PrereqError as e:
                    problems.append((("roles", role.name, "app"), e))
        for image in spec.images:
            if image.path is not None:
                try:
                    tars[image.name] = (Path(image.path), _sha256(Path(image.path), image.name))
                except PrereqError as e:
                    problems.append((("images", image.name, "path"), e))
        if problems:
            raise _located(text, str(file), problems)
        sources = {}
        for role_name, packed in packs.items():
            sources[role_name] = client.upload_packed(packed)
    tarballs = {}
    for image_name, (path, digest) in tars.items():
        if not client.has_tarball(digest):
            sent = client.upload_tarball(path)
            if sent != digest:
                raise PrereqError(f"{path} changed while it was uploaded",
                                  hint="apply again once it is written")
        tarballs[image_name] = digest
    return SentStack(spec, text, str(file), sources, tarballs)


@contextmanager
def _packed(path: Path) -> Iterator[IO[bytes]]:
    """The app dir packed into a temporary file (api/pack.py checks it whole first)."""
    from rackfire.api.pack import pack_source

    if not os.path.lexists(path):
        raise PrereqError(f"{path} does not exist", hint="the path is relative to the stack file")
    if path.is_symlink():
        raise PrereqError(f"{path} is a symlink", hint="name the directory itself")
    if not path.is_dir():
        raise PrereqError(f"{path} is not a directory", hint="`app:` names the app's source dir")
    with tempfile.TemporaryFile() as f:
        pack_source(path, f)
        f.seek(0)
        yield f


def _sha256(path: Path, image: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PrereqError(f"image {image!r}: {path} does not exist",
                          hint="the path is relative to the stack file") from None
    except OSError as e:
        raise PrereqError(f"image {image!r}: cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PrereqError(f"image {image!r}: {path} is not a regular file",
                          hint="`path:` names a rootfs tarball (.tar, .tar.gz, .tar.xz)")
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise PrereqError(f"image {image!r}: cannot read {path}: {e.strerror}") from None
    return h.hexdigest()


def _located(text: str, filename: str,
             problems: list[tuple[tuple[str, str, str], PrereqError]]) -> SpecError:
    from rackfire.spec.yamltree import read_yaml

    doc: Document = read_yaml(text, filename)
    found = [doc.problem(field, e.message + (f" ({e.hint})" if e.hint else ""))
             for field, e in problems]
    return SpecError(sorted(found, key=_position))


def _position(p: SpecProblem) -> tuple[int, int, str]:
    return p.line, p.column, p.field
