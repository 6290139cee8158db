"""Reading an untrusted tar archive (`safe_tar.py` says what an import guarantees): opened by
its content (plain, gzip or xz), hashed as it is read and cut off at a size bound, with a
member list that must end with its end-of-archive block; and what a broken archive raises,
turned into a refusal that names the file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol, Self, cast

from rackfire.errors import ExecError, PrereqError

MiB = 1024**2


@contextlib.contextmanager
def read_errors(tar_path: Path) -> Iterator[None]:
    """What reading a broken archive raises, as a refusal that names the file."""
    try:
        yield
    except Truncated as e:
        raise PrereqError(f"{tar_path} is truncated or corrupt: {e}",
                          hint="the file is incomplete; copy or download it again "
                               "(nothing was imported)") from None
    except EOFError as e:  # a gzip or xz stream that stops before its end-of-stream marker
        raise PrereqError(f"{tar_path} is truncated: {e}",
                          hint="the file is incomplete; copy or download it again "
                               "(nothing was imported)") from None
    except (tarfile.TarError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as e:
        if str(e) == "unexpected end of data":  # tarfile, inside a member's data
            raise PrereqError(f"{tar_path} is truncated: the archive ends inside a member's "
                              "data", hint="the file is incomplete; copy or download it "
                              "again (nothing was imported)") from None
        raise PrereqError(f"{tar_path} is not a readable tar archive: {e}",
                          hint="use an uncompressed, gzip or xz tar archive") from None
    except OSError as e:
        raise ExecError(f"extracting {tar_path} failed: {e}") from e


class Truncated(tarfile.ReadError):
    pass


class StrictTarInfo(tarfile.TarInfo):
    """tarfile ends the member list silently at an empty, short or corrupt header once past
    the first one, so a truncated archive would read as a complete one with fewer members.
    Only an all-zero block (the end-of-archive marker, which tarfile stops at) ends it here;
    anything else raises, and tarfile passes the error on. At the very first header, tarfile
    itself says the file is not a tar archive."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            kind = type(e).__name__  # these subclasses are missing from typeshed
            if tf.offset == 0 or kind == "EOFHeaderError":
                raise
            if kind == "EmptyHeaderError":
                raise Truncated("the archive ends without its end-of-archive marker") from None
            if kind == "TruncatedHeaderError":
                raise Truncated("the archive ends inside a member header") from None
            raise Truncated(f"a member header is corrupt ({e})") from None


def open_decompressed(path: Path) -> IO[bytes]:
    """By content, not by name: an upload is spooled under a name of the server's choosing."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    if magic == b"\xfd7zXZ\x00":
        return cast(IO[bytes], lzma.open(path, "rb"))
    return open(path, "rb")  # plain tar; tarfile says so if it is not one


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class HashingReader:
    """Hashes everything read through it and refuses to read past a size bound."""

    def __init__(self, raw: _Readable, cap: int, path: Path) -> None:
        self.raw, self.cap, self.path = raw, cap, path
        self.count = 0
        self._h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if 0 <= n <= MiB else MiB)
        self.count += len(data)
        if self.count > self.cap:
            raise PrereqError(f"{self.path}: decompressed archive is larger than "
                              f"{self.cap} bytes", hint="raise ImportLimits.max_bytes")
        self._h.update(data)
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()
