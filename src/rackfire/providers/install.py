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
DATA_DIR = "/var/lib/rackfire-agent"  # `rackfire agent`'s default
_PROBE = ("import os, platform, sys; print('%d.%d' % sys.version_info[:2], platform.machine(), "
          "os.path.isdir('/run/systemd/system'))")


@dataclass(frozen=True, slots=True)
class Probe:
    python: str  # "3.11"
    machine: str  # "x86_64"
    systemd: bool  # systemd runs there: the agent is a unit, else a supervised daemon


async def probe(s: Session, bundle: Bundle | None = None) -> Probe:
    """What the host runs; an SshError if `bundle` cannot run there."""
    ran = await s.run(["python3", "-c", _PROBE], step="probe")
    try:
        python, machine, systemd = ran.stdout.split()
    except ValueError:
        raise SshError(s.name, "probe", f"unexpected answer {ran.stdout[:200]!r}") from None
    found = Probe(python, machine, systemd == "True")
    if bundle is not None and (found.python, found.machine) != (bundle.python,
                                                                bundle.machine):
        raise SshError(s.name, "probe", f"it has Python {found.python} on {found.machine}; "
                       f"this bundle is for Python {bundle.python} on {bundle.machine}",
                       hint="install that python3 there, or run the server on a machine "
                            "like the hosts")
    return found


async def installed(s: Session, root: str = DEFAULT_ROOT) -> str:
    """The dir of the bundle the host runs now."""
    ran = await s.run(["readlink", "-e", "--", posixpath.join(root, "current")],
                      step="installed")
    return ran.stdout.strip()


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
    data_dir: str = DATA_DIR


# Without systemd: the agent under a shell that starts it again a second after it exits, in
# a session of its own (stopped by its process group), output appended to a log.
_SUPERVISE = ('exec >>"$0" 2>&1 </dev/null; echo $$ >"$1"; shift; '
              'while :; do "$@"; sleep 1; done')
# Its process group (the supervisor and the agent) signalled ($1: USR1 for a restart, which
# holds the lease meanwhile; TERM), then waited for, up to 20 s, then killed: a new agent
# must not start beside the old one (two would heartbeat).
_STOP = ('test -s "$0" || exit 0; g=$(cat "$0"); kill -"$1" -"$g" 2>/dev/null; i=0; '
         'while kill -0 -"$g" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; '
         'kill -KILL -"$g" 2>/dev/null; rm -f "$0"; exit 0')
UNIT = "/etc/systemd/system/rackfire-agent.service"


def agent_argv(root: str, setup: AgentSetup) -> list[str]:
    labels = [a for k, v in setup.labels for a in ("--label", f"{k}={v}")]
    return ["python3", "-I", "-S", posixpath.join(root, "current", "run.py"), "agent",
            "--join", setup.controller, "--token-file", posixpath.join(root, "join-token"),
            "--name", setup.name, *labels, "--data-dir", setup.data_dir]


async def start_agent(s: Session, found: Probe, where: str, setup: AgentSetup, token: str,
                      root: str = DEFAULT_ROOT) -> None:
    """The agent of the bundle at `where` running as a service, joining with `token` (kept
    in a 0600 file the agent removes once read; "" once joined); one already running is
    stopped first (its instances keep running, and it adopts them again)."""
    await stop_agent(s, found, root, restart=True)
    if token:  # a first start; afterwards the agent has its credential
        await s.run(["sh", "-c", 'umask 077 && cat >"$0"', posixpath.join(root, "join-token")],
                    input=token, step="join token")
    await s.run(["ln", "-sfn", "--", where, posixpath.join(root, "current")], step="activate")
    argv = agent_argv(root, setup)
    if found.systemd:
        unit = ("[Unit]\nDescription=rackfire agent\nAfter=network-online.target\n\n"
                f"[Service]\nExecStart={' '.join(shlex_quote(a) for a in argv)}\n"
                "Restart=always\nRestartSec=1\nKillMode=process\nKillSignal=SIGUSR1\n\n"
                "[Install]\nWantedBy=multi-user.target\n")
        await s.run(["sh", "-c", 'cat >"$0"', UNIT], input=unit, step="service unit")
        await s.run(["systemctl", "daemon-reload"], step="service unit")
        await s.run(["systemctl", "enable", "--now", "rackfire-agent.service"], step="start")
        return
    await s.run(["setsid", "-f", "sh", "-c", _SUPERVISE, posixpath.join(root, "agent.log"),
                 posixpath.join(root, "agent.pid"), *argv], step="start")


async def stop_agent(s: Session, found: Probe, root: str = DEFAULT_ROOT, *,
                     restart: bool = False) -> None:
    """Stop the agent (and its supervisor); its instances keep running. For a `restart` it
    holds its lease first (agent/daemon.py `_hold_lease`), so they do not fail over while
    the next one starts. None running: fine."""
    if found.systemd:  # the unit's KillSignal is USR1: a stop by systemd holds it too
        await s.run(["systemctl", "stop", "rackfire-agent.service"], check=False, step="stop")
        return
    await s.run(["sh", "-c", _STOP, posixpath.join(root, "agent.pid"),
                 "USR1" if restart else "TERM"], step="stop")


# What is removed of a host, each dir's contents on its own filesystem only (a mount left
# under it is not followed), then the dir itself if it can be (a mount point stays).
_EMPTY_AND_REMOVE = ('for d in "$@"; do test -d "$d" || continue; '
                     'find "$d" -xdev -mindepth 1 -delete || exit 1; rmdir -- "$d" 2>/dev/null; '
                     'done; exit 0')


async def uninstall(s: Session, found: Probe, data_dir: str = DATA_DIR,
                    root: str = DEFAULT_ROOT) -> None:
    """Everything an install put on the host, gone: the agent and its watchdog stopped, the
    service unit, the bundles, the agent's data dir, rackfire's runtime dir. Its instances
    must be gone first (a drain): their disks are in the data dir."""
    await stop_agent(s, found, root)
    await s.run(["sh", "-c", 'test -s "$0" || exit 0; kill -TERM "$(cat "$0")" 2>/dev/null; '
                 "exit 0", posixpath.join(data_dir, "watchdog", "pid")], step="stop")
    if found.systemd:
        await s.run(["systemctl", "disable", "--now", "rackfire-agent.service"],
                    check=False, step="service unit")
        await s.run(["rm", "-f", "--", UNIT], step="service unit")
        await s.run(["systemctl", "daemon-reload"], step="service unit")
    await s.run(["sh", "-c", _EMPTY_AND_REMOVE, "sh", root, data_dir,
                 "/run/rackfire/logshim"], step="remove")
    # The runc root only if no container is left in it (nor anything else).
    await s.run(["sh", "-c", 'rmdir -- "$0" "$1" 2>/dev/null; exit 0', "/run/rackfire/runc",
                 "/run/rackfire"], step="remove")
