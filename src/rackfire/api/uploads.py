"""Request bodies streamed to a file under a cap: image tarballs, app sources."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastapi import Request

from rackfire.errors import TooLarge


async def spool(request: Request, directory: Path, prefix: str, cap: int,
                hasher: Any | None = None) -> Path:
    """The body, in a new file in `directory`; the caller removes it. `hasher` (a hashlib
    object) is fed the body as it is written."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}.{uuid.uuid4().hex[:8]}.upload"
    size = 0
    try:
        with open(path, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    # BodyLimit stops it first; this is for a caller with a smaller cap.
                    raise TooLarge(f"upload larger than {cap >> 20} MiB",
                                   hint="leave build output and data out of the dir")
                f.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
