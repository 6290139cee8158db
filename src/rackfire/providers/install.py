"""Installing rackfire on an existing server over SSH, step by step, each step a command
that can be run again: what the host is (`probe`), the bundle put and unpacked beside the
versions already there (`put_bundle`), each version in a directory of its own named by its
digest, so an upgrade lays the new one down before anything changes and a failed copy
leaves the installed one as it was.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from shlex import quote as shlex_quote

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


@dataclass(frozen=True, slots=True)
class AgentSetup:
    """How the installed agent runs: the controller it joins, as what."""

    controller: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    data_dir: str = "/var/lib/rackfire-agent"


# Without systemd: the agent under a shell that starts it again a second after it exits, in
# a session of its own (stopped by its process group), output appended to a log.
_SUPERVISE = ('exec >>"$0" 2>&1 </dev/null; echo $$ >"$1"; shift; '
              'while :; do "$@"; sleep 1; done')
UNIT = "/etc/systemd/system/rackfire-agent.service"


def agent_argv(root: str, setup: AgentSetup) -> list[str]:
    labels = [a for k, v in setup.labels for a in ("--label", f"{k}={v}")]
    return ["python3", "-I", "-S", posixpath.join(root, "current", "run.py"), "agent",
            "--join", setup.controller, "--token-file", posixpath.join(root, "join-token"),
            "--name", setup.name, *labels, "--data-dir", setup.data_dir]


async def start_agent(s: Session, found: Probe, where: str, setup: AgentSetup, token: str,
                      root: str = DEFAULT_ROOT) -> None:
    """The agent of the bundle at `where` running as a service, joining with `token` (kept
    in a 0600 file the agent removes once read); one already running is stopped first."""
    await stop_agent(s, found, root)
    await s.run(["sh", "-c", 'umask 077 && cat >"$0"', posixpath.join(root, "join-token")],
                input=token, step="join token")
    await s.run(["ln", "-sfn", "--", where, posixpath.join(root, "current")], step="activate")
    argv = agent_argv(root, setup)
    if found.systemd:
        unit = ("[Unit]\nDescription=rackfire agent\nAfter=network-online.target\n\n"
                f"[Service]\nExecStart={' '.join(shlex_quote(a) for a in argv)}\n"
                "Restart=always\nRestartSec=1\nKillMode=process\n\n"
                "[Install]\nWantedBy=multi-user.target\n")
        await s.run(["sh", "-c", 'cat >"$0"', UNIT], input=unit, step="service unit")
        await s.run(["systemctl", "daemon-reload"], step="service unit")
        await s.run(["systemctl", "enable", "--now", "rackfire-agent.service"], step="start")
        return
    await s.run(["setsid", "-f", "sh", "-c", _SUPERVISE, posixpath.join(root, "agent.log"),
                 posixpath.join(root, "agent.pid"), *argv], step="start")


async def stop_agent(s: Session, found: Probe, root: str = DEFAULT_ROOT) -> None:
    """Stop the agent (and its supervisor); its instances keep running. None running: fine."""
    if found.systemd:
        await s.run(["systemctl", "stop", "rackfire-agent.service"], check=False, step="stop")
        return
    await s.run(["sh", "-c", 'test -s "$0" || exit 0; kill -TERM -- -"$(cat "$0")" '
                 '2>/dev/null; rm -f "$0"', posixpath.join(root, "agent.pid")], step="stop")
