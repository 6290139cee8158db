"""Rootfs tarballs that stack files' `from: tarball` images name, uploaded by the CLI and kept
by the sha256 of their bytes in `<uploads>/tarballs/<sha256>.tar`.

The server reads no path of a client's (the CLI may run on another machine): a stack file's
`path:` is a label, and the image is imported from the kept file, which never changes once
it is there (a second upload of the same bytes keeps the first: its mtime is in the image's
build key), so the image is kept until the file names other bytes. Kept files are not
collected yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from rackfire.api.answers import TarballAnswer
from rackfire.api.types import DigestPath, binary_body, errors
from rackfire.api.uploads import spool
from rackfire.errors import NotFound

MAX_TARBALL = 8 << 30  # as an image import's (PUT /v1/images/{name}/tarball)


def tarball_path(uploads: Path, digest: str) -> Path:
    return uploads / "tarballs" / f"{digest}.tar"


def add_tarball_routes(app: FastAPI, uploads: Path) -> None:
    @app.get("/v1/tarballs/{digest}", responses=errors(404))
    def tarball(digest: DigestPath) -> TarballAnswer:
        """Whether the server keeps this tarball already: a client uploads it only if not."""
        try:
            size = tarball_path(uploads, digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no uploaded tarball {digest[:12]}",
                           hint="upload it: POST /v1/tarballs") from None
        return TarballAnswer(digest=digest, size=size)

    @app.post("/v1/tarballs", responses=errors(500), openapi_extra=binary_body())
    async def upload_tarball(request: Request) -> TarballAnswer:
        """The body is a rootfs tarball (.tar, .tar.gz, .tar.xz), kept by its sha256 for the
        stack files whose `from: tarball` images name it (`tarballs` of plan and apply). It
        is checked when a plan or apply names it, and imported when a role uses it."""
        hasher = hashlib.sha256()
        spooled = await spool(request, uploads, "tarball", MAX_TARBALL, hasher)
        try:
            digest = hasher.hexdigest()
            await run_in_threadpool(_keep, spooled, tarball_path(uploads, digest))
        finally:
            spooled.unlink(missing_ok=True)
        return TarballAnswer(digest=digest, size=tarball_path(uploads, digest).stat().st_size)


def _keep(spooled: Path, dest: Path) -> None:
    """Give the spooled file its digest's name, unless a file has it already (the same bytes,
    which must keep their mtime)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(spooled, "rb") as f:
        os.fsync(f.fileno())  # complete on disk before it is visible under its name
    with contextlib.suppress(FileExistsError):
        os.link(spooled, dest)
