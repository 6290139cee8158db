"""Installing rackfire on an existing server over SSH, step by step, each step a command
that can be run again: what the host is (`probe`), the bundle put and unpacked beside the
versions already there (`put_bundle`), each version in a directory of its own named by its
digest, so an upgrade lays the new one down before anything changes and a failed copy
leaves the installed one as it was.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from rackfire.providers.bundle import Bundle
from rackfire.providers.ssh import Session, SshError

DEFAULT_ROOT = "/opt/rackfire"
_PROBE = ("import os, platform, sys; print('%d.%d' % sys.version_info[:2], platform.machine(), "
          "os.path.isdir('/run/systemd/system'))")


@dataclass(frozen=True, slots=True)
class Probe:
    python: str  # "3.11"
    machine: str  # "x86_64"
    systemd: bool  # systemd runs there: the agent is a unit, else a supervised daemon


async def probe(s: Session, bundle: Bundle) -> Probe:
    """What the host runs; an SshError if the bundle cannot run there."""
    ran = await s.run(["python3", "-c", _PROBE], step="probe")
    try:
        python, machine, systemd = ran.stdout.split()
    except ValueError:
        raise SshError(s.name, "probe", f"unexpected answer {ran.stdout[:200]!r}") from None
    found = Probe(python, machine, systemd == "True")
    if (found.python, found.machine) != (bundle.python, bundle.machine):
        raise SshError(s.name, "probe", f"it has Python {found.python} on {found.machine}; "
                       f"this bundle is for Python {bundle.python} on {bundle.machine}",
                       hint="install that python3 there, or run the server on a machine "
                            "like the hosts")
    return found


async def put_bundle(s: Session, bundle: Bundle, root: str = DEFAULT_ROOT) -> str:
    """The bundle unpacked under `root`/<bundle name>/ (already there: kept); its dir."""
    target = posixpath.join(root, bundle.name)
    marker = posixpath.join(target, ".complete")
    if (await s.run(["test", "-e", marker], check=False)).code == 0:
        return target
    staging = f"{target}.partial"
    upload = f"{staging}.tar"
    await s.run(["rm", "-rf", "--", staging, upload], step="prepare")
    await s.run(["mkdir", "-p", "--", staging], step="prepare")
    await s.put(bundle.path, upload)
    await s.run(["sha256sum", "-c", "--quiet", "-"], input=f"{bundle.digest}  {upload}\n",
                step="verify")
    await s.run(["tar", "-xf", upload, "-C", staging, "--strip-components=1",
                 "--no-same-owner"], step="unpack")
    await s.run(["rm", "-f", "--", upload], step="unpack")
    await s.run(["touch", "--", posixpath.join(staging, ".complete")], step="unpack")
    await s.run(["rm", "-rf", "--", target], step="unpack")
    await s.run(["mv", "-T", "--", staging, target], step="unpack")
    return target
