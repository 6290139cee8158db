"""The OCI runtime config for one instance. Pure: request in, config.json dict out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rackfire.model.instance import InstanceRequest
from rackfire.net import names

CPU_PERIOD = 100_000

# Docker's default set, less the ones a web appliance never needs (MKNOD, NET_RAW,
# AUDIT_WRITE, SETFCAP): enough to start daemons that drop privileges.
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_NET_BIND_SERVICE", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_SYS_CHROOT",
]

_BASE_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "nodev", "mode=755", "size=16384k"]},
    # The instance's own cgroups, read-only, so a runtime that sizes itself from its limits
    # (a JVM, Go's GOMAXPROCS, Node) reads the instance's and not the host's. With the cgroup
    # namespace below, runc mounts the host's kind: cgroup2 (memory.max, cpu.max at the top)
    # on a unified host; on a v1 or hybrid one a tmpfs with one hierarchy per controller
    # (memory/memory.limit_in_bytes, cpu/cpu.cfs_quota_us), each rooted at the instance's.
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
]


RESOLV_CONF = "resolv.conf"
# Instances have no route out of the stack's network yet, so the host's DNS servers would
# only time out (5 s a lookup, twice: Python's http.server does one at start). With no
# server listed, a lookup that /etc/hosts cannot answer fails at once (127.0.0.1:53,
# refused) instead.
RESOLV_TEXT = ("# rackfire: stack names resolve from /etc/hosts; no DNS server is reachable "
               "from here\noptions ndots:0 timeout:1 attempts:1\n")


def oci_config(
    req: InstanceRequest,
    host_binds: tuple[str, ...],
    hosts_file: Path,
    netns_path: str,
    data_source: Path | None = None,
) -> dict[str, Any]:
    r = req.resources
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if r.memory is not None:
        # swap == memory: no swap, so the limit is a hard limit.
        resources["memory"] = {"limit": r.memory, "swap": r.memory}
    if r.cpu is not None:
        resources["cpu"] = {"quota": int(r.cpu * CPU_PERIOD), "period": CPU_PERIOD}
    if r.pids is not None:
        resources["pids"] = {"limit": r.pids}
    env = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"HOSTNAME={req.key.name}",
        "HOME=/root",
        f"RACKFIRE_STACK={req.key.stack}",
        f"RACKFIRE_ROLE={req.key.role}",
        f"RACKFIRE_INDEX={req.key.index}",
        f"RACKFIRE_IP={req.ip}",
        *(f"{k}={v}" for k, v in req.env),
    ]
    mounts = list(_BASE_MOUNTS)
    mounts += [
        {"destination": b, "type": "bind", "source": b,
         "options": ["rbind", "ro", "nosuid", "nodev"]}
        for b in host_binds
    ]
    # A bind of the stack's hosts file: rewritten in place, so names stay current without a
    # restart (a file in the overlay's lower layer may not change under a mounted overlay).
    mounts.append({"destination": "/etc/hosts", "type": "bind", "source": str(hosts_file),
                   "options": ["bind", "ro", "nosuid", "nodev", "noexec"]})
    resolv = hosts_file.with_name(RESOLV_CONF)
    if resolv.exists():  # the stack's, next to its hosts file (see RESOLV_TEXT)
        mounts.append({"destination": "/etc/resolv.conf", "type": "bind",
                       "source": str(resolv), "options": ["bind", "ro", "nosuid", "nodev",
                                                          "noexec"]})
    if req.data is not None and data_source is not None:
        # The data disk, mounted on the host; runc makes the mount point in the rootfs.
        mounts.append({"destination": req.data.path, "type": "bind",
                       "source": str(data_source), "options": ["bind", "rw", "nosuid", "nodev"]})
    caps = list(CAPABILITIES)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(req.command),
            "env": env,
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            # Within the machine's hard limit (nofile 20000): more makes runc fail.
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": req.key.name,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": f"/rackfire/{names.cgroup_name(req.key.id)}",
            "resources": resources,
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "cgroup"},  # /proc/self/cgroup and the mount above start at "/"
                {"type": "network", "path": netns_path},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
                # runc 1.1 leaves the tmpfs under a v1 cgroup mount writable ("ro" reaches
                # only the hierarchies in it): bound read-only again here.
                "/sys/fs/cgroup",
            ],
        },
    }
