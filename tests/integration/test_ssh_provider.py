"""Existing servers over SSH, against a real OpenSSH server in a bed host (key auth only):
commands with their exit codes and stderr, quoted argv, SFTP; the host key checked against a
pinned fingerprint or a known_hosts file, and refused when it changed; a wrong key, an
unreachable address and a missing known_hosts each a clear error naming the host and step."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rackfire.model.hostsfile import SshTarget
from rackfire.providers import bundle as bundles
from rackfire.providers.install import probe, put_bundle
from rackfire.providers.ssh import Ran, SshError, connect
from rackfire.testbed.bed import Bed
from rackfire.testbed.sshd import Sshd, start_sshd

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                       reason="needs root (runs anyway when CI=true)"),
]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sshd, Path]]:
    work = tmp_path_factory.mktemp("ssh")
    key = keygen(work / "id_ed25519")
    bed = Bed(1).create()
    try:
        server = start_sshd(bed, bed.hosts[0], work / "sshd",
                            Path(f"{key}.pub").read_text())
        deadline = time.monotonic() + 20
        while bed.run_in(bed.hosts[0], ["ss", "-Hltn", f"sport = :{server.port}"]).stdout \
                .strip() == "":
            assert time.monotonic() < deadline, (work / "sshd" / "sshd.log").read_text()
            time.sleep(0.1)
        yield server, key
    finally:
        bed.destroy()


def target(server: Sshd, client_key: Path, **changes: object) -> SshTarget:
    t = SshTarget(server.host.ip, server.port, "root", str(client_key), server.fingerprint())
    return replace(t, **changes)  # type: ignore[arg-type]


async def run(t: SshTarget, *argv: str, check: bool = True) -> Ran:
    async with connect("h1", t, timeout=3) as s:
        return await s.run(argv, check=check)


def test_commands_run_with_their_exit_code_and_stderr(sshd: tuple[Sshd, Path],
                                                      tmp_path: Path) -> None:
    server, key = sshd
    t = target(server, key)
    assert asyncio.run(run(t, "echo", "a b", "$(id)")).stdout == "a b $(id)\n"  # quoted
    failed = asyncio.run(run(t, "sh", "-c", "echo oops >&2; exit 3", check=False))
    assert (failed.code, failed.stderr) == (3, "oops\n")
    with pytest.raises(SshError, match=r"^h1: sh: exited 3: oops$"):
        asyncio.run(run(t, "sh", "-c", "echo oops >&2; exit 3"))
    (tmp_path / "f").write_bytes(b"\x00payload")

    async def copy() -> str:
        async with connect("h1", t) as s:
            await s.put(tmp_path / "f", str(tmp_path / "copied"))
            return (await s.run(["od", "-An", "-c", str(tmp_path / "copied")])).stdout
    assert asyncio.run(copy()).split() == ["\\0", "p", "a", "y", "l", "o", "a", "d"]


def test_a_known_hosts_file_is_checked_and_a_changed_host_key_refused(
        sshd: tuple[Sshd, Path], tmp_path: Path) -> None:
    server, key = sshd
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line())
    by_file = target(server, key, host_key="", known_hosts=str(known))
    assert asyncio.run(run(by_file, "true")).code == 0
    with pytest.raises(SshError, match="h1: host key: no known_hosts file"):
        asyncio.run(run(replace(by_file, known_hosts=str(tmp_path / "none"))))
    pinned = target(server, key)
    server.new_host_key()
    for t in (pinned, by_file):
        with pytest.raises(SshError, match=r"h1: host key: .*refused") as e:
            asyncio.run(run(t, "true"))
        assert "in the middle" in (e.value.hint or "")
    # Pinned anew, it is let in again.
    assert asyncio.run(run(target(server, key), "true")).code == 0


def test_a_wrong_key_and_an_unreachable_address_name_the_host_and_the_step(
        sshd: tuple[Sshd, Path], tmp_path: Path) -> None:
    server, key = sshd
    other = keygen(tmp_path / "other")
    with pytest.raises(SshError, match=r"^h1: login: root@.* refused the key"):
        asyncio.run(run(target(server, key, key=str(other)), "true"))
    t0 = time.monotonic()
    nobody = server.host.ip.rsplit(".", 1)[0] + ".200"  # in the bed's /24, no host there
    with pytest.raises(SshError, match=rf"^h1: connect: cannot reach {nobody}:22"):
        asyncio.run(run(target(server, key, address=nobody), "true"))
    assert time.monotonic() - t0 < 10


def test_the_bundle_goes_over_and_runs_there_from_itself_alone(sshd: tuple[Sshd, Path],
                                                             tmp_path: Path) -> None:
    """Probed (Python and machine), put over SFTP, checked by its digest, unpacked beside
    what is there, and run by the host's own python3 with no site-packages of its own."""
    server, key = sshd
    bundle = bundles.build(tmp_path / "bundles")
    assert bundles.build(tmp_path / "bundles") == bundle  # reproducible: the same digest
    root = str(tmp_path / "opt")

    async def install() -> tuple[str, str, str]:
        async with connect("h1", target(server, key)) as s:
            found = await probe(s, bundle)
            where = await put_bundle(s, bundle, root)
            assert await put_bundle(s, bundle, root) == where  # there already: kept
            ran = await s.run(["/usr/bin/python3", "-I", "-S", f"{where}/run.py", "--help"])
            return found.python, where, ran.stdout
    python, where, usage = asyncio.run(install())
    assert python == bundle.python
    assert where == f"{root}/{bundle.name}" and "Usage: rackfire" in usage
    assert sorted(os.listdir(root)) == [bundle.name]  # no staging or upload left
    # A bundle for another Python is refused at the probe, before anything is copied.
    other = bundles.Bundle(bundle.path, bundle.version, "2.7", bundle.machine, bundle.digest)

    async def refused() -> None:
        async with connect("h1", target(server, key)) as s:
            await probe(s, other)
    with pytest.raises(SshError, match=r"h1: probe: it has Python 3\.\d+ on .*bundle is "
                                       r"for Python 2\.7"):
        asyncio.run(refused())
