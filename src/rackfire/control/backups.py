"""Backups: snapshots shipped off their hosts to a repository by restic (agent/backups.py),
read back to restore a stack (the same or a new one) when its hosts or its snapshots are
gone, verified by reading them back, and taken on a schedule per role with a retention.

A backup is a snapshot taken for it (named as the backup), each host sending what it holds
of it to the repository at once, then the snapshot removed: the record (`backups` table)
keeps the snapshot's record (spec, releases, where each instance's copy was) and the
repository's id of each instance's archive. A restore fetches every archive onto a host
(the one it came from if it is up, else the first live one) as the snapshot again, then
restores that (control/snapshots.py): a restore rolls like one from a snapshot.

Repositories are named, and kept with their secrets in the store; an answer, a log or an
event names a repository and its address, never its password or keys. Every call that
reaches one runs on a host, whose restic reads the secrets from its environment only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from rackfire.control.commands import Commands
from rackfire.control.executor import CONTROLLER
from rackfire.control.fleet import Fleet
from rackfire.control.snapshots import SnapshotCommands, check_name, on_hosts
from rackfire.errors import Conflict, NotFound, PrereqError, RackfireError
from rackfire.model.agent import BackupTarget, HostLink
from rackfire.model.instance import InstanceKey, Target
from rackfire.model.records import (
    Backup,
    BackupPart,
    BackupState,
    Repository,
    SnapshotCopy,
    SnapshotState,
)
from rackfire.model.stack import Keep
from rackfire.store import StateStore

log = logging.getLogger("rackfire.backups")
SCHEDULE_LOOK = 15.0  # seconds between two looks at which role's backup is due


class BackupCommands:
    def __init__(self, store: StateStore, fleet: Fleet, commands: Commands,
                 snapshots: SnapshotCommands) -> None:
        self.store, self.fleet, self.commands, self.snapshots = store, fleet, commands, snapshots
        self._schedule_lock = threading.Lock()

    # repositories -----------------------------------------------------------------------

    def add_repository(self, name: str, url: str, password: str,
                       env: Sequence[tuple[str, str]], actor: str) -> Repository:
        """Keep the repository, once a host opened it (or made it, if it is new) with the
        password: an unreachable one or a wrong password is refused, nothing kept."""
        with self.commands.audited(actor, "", f"repository/{name}", "repository add"):
            check_name(name, "repository")
            repo = Repository(name, url, password, tuple(env), time.time(), actor)
            try:
                self._home().forget_backups(_target(repo), [])  # opens or makes it
            except PrereqError as e:  # what is there (or not) refuses it: not the request
                raise Conflict(e.message, hint=e.hint) from None
            self.store.repositories.put(repo)
        self.commands.event(actor, "", f"repository/{name}", "repository add", repo.shown_url)
        return repo

    def repositories(self) -> list[Repository]:
        return self.store.repositories.all()

    def remove_repository(self, name: str, actor: str) -> None:
        with self.commands.audited(actor, "", f"repository/{name}", "repository rm"):
            self._repository(name)
            self.store.repositories.drop(name)
        self.commands.event(actor, "", f"repository/{name}", "repository rm", "")

    # backups ----------------------------------------------------------------------------

    def create(self, target: Target, repository: str, name: str | None,
               actor: str) -> Backup:
        stack = target.stack
        with self.commands.audited(actor, stack, str(target), "backup"):
            repo = self._repository(repository)
            name = name or time.strftime("b%Y%m%d-%H%M%S", time.gmtime())
            check_name(name, "backup")
            if self.store.backups.get(stack, name) is not None:
                raise Conflict(f"backup {stack}@{name} already exists",
                               hint="choose another --name")
        started = time.monotonic()
        snap = self.snapshots.take(target, name, actor)
        backup = Backup(stack, name, repository, snap.created, actor, BackupState.TAKING, snap)
        self.store.backups.begin(backup)
        tags = ["rackfire", f"stack:{stack}", f"backup:{name}"]
        try:
            hosts: dict[str, list[InstanceKey]] = {c.host: [] for c in snap.copies}
            results = on_hosts(hosts, lambda h, _: self.fleet.link(h).backup_snapshot(
                stack, name, _target(repo), tags))
            parts = tuple(BackupPart(b.instance, host, b.archive, b.size)
                          for host, sent in results.items()
                          if not isinstance(sent, RackfireError) for b in sent)
            failed = [(h, e) for h, e in results.items() if isinstance(e, RackfireError)]
            if failed:
                host, error = failed[0]
                self._forget(repo, [p.archive for p in parts])
                why = f"host {host}: {error.message}"
                self.store.backups.finish(stack, name, BackupState.FAILED, (), why)
                self.store.add_event(actor, stack, str(target), "backup", "failed", why)
                raise type(error)(f"backup {stack}@{name} failed on {why}",
                                  hint=error.hint or "nothing of it was kept")
            self.store.backups.finish(stack, name, BackupState.READY, parts)
        finally:
            self.snapshots.remove(stack, name, actor)
        sent = sum(p.size for p in parts)
        self.commands.event(actor, stack, str(target), "backup",
                            f"{stack}@{name} to {repository}: {len(parts)} instance(s), "
                            f"{sent / (1 << 20):.1f} MiB in {time.monotonic() - started:.1f} s")
        found = self.store.backups.get(stack, name)
        assert found is not None
        return found

    def recover(self) -> None:
        """At the server's start: a backup it was sending when it stopped is failed (its
        archives, if any reached the repository, are left to `backup rm`)."""
        for b in self.store.backups.of_stack():
            if b.state is BackupState.TAKING:
                self.store.backups.finish(b.stack, b.name, BackupState.FAILED, b.parts,
                                          "the server stopped while it was sent")

    def of_stack(self, stack: str | None = None) -> list[Backup]:
        return self.store.backups.of_stack(stack)

    def get(self, stack: str, name: str) -> Backup:
        found = self.store.backups.get(stack, name)
        if found is None:
            raise NotFound(f"no backup {stack}@{name}", hint=f"see `rackfire backup ls {stack}`")
        return found

    def remove(self, stack: str, name: str, actor: str) -> None:
        with self.commands.audited(actor, stack, f"{stack}@{name}", "backup rm"):
            backup = self.get(stack, name)
            repo = self._repository(backup.repository)
        self._forget(repo, [p.archive for p in backup.parts], strict=True)
        self.store.backups.drop(stack, name)
        self.commands.event(actor, stack, backup.ref, "backup rm", "")

    def verify(self, stack: str, name: str, actor: str) -> tuple[int, float]:
        """The repository checked, and every archive of the backup read back through the
        disk stream's checks: (bytes read, seconds)."""
        with self.commands.audited(actor, stack, f"{stack}@{name}", "backup verify"):
            backup = self.get(stack, name)
            if backup.state is not BackupState.READY:
                raise Conflict(f"backup {backup.ref} is {backup.state}", hint=backup.error)
            repo = self._repository(backup.repository)
            started = time.monotonic()
            read = self._home().verify_backup(_target(repo), [p.archive for p in backup.parts])
        took = time.monotonic() - started
        self.commands.event(actor, stack, backup.ref, "backup verify",
                            f"{read / (1 << 20):.1f} MiB read back whole in {took:.1f} s")
        return read, took

    def restore(self, stack: str, name: str, to: str | None, confirm: bool,
                actor: str) -> tuple[int, list[InstanceKey]]:
        """Fetch the backup's archives onto hosts as its snapshot again, then restore that
        (into `to`, default its own stack): refused before anything is fetched where the
        restore from the snapshot would be."""
        target = to or stack
        with self.commands.audited(actor, target, f"{stack}@{name}", "backup restore"):
            backup = self.get(stack, name)
            if backup.state is not BackupState.READY:
                raise Conflict(f"backup {backup.ref} is {backup.state}", hint=backup.error)
            repo = self._repository(backup.repository)
            check_name(target, "stack")
            rec = self.store.get_stack(target)
            if rec is not None and not confirm and self.fleet.observe(target):
                raise Conflict(f"restoring {backup.ref} replaces the disks of instances of "
                               f"{target} that exist now", hint="add -y to go ahead")
            if self.store.snapshots.get(stack, name) is not None:
                raise Conflict(f"a snapshot {stack}@{name} exists: restore from it",
                               hint=f"`rackfire restore {stack}@{name}`")
        by_host: dict[str, list[BackupPart]] = {}
        live = self._live_hosts()
        for p in backup.parts:
            by_host.setdefault(p.host if p.host in live else live[0], []).append(p)
        snap = backup.snapshot
        self.store.snapshots.begin(replace(snap, actor=actor, state=SnapshotState.TAKING,
                                           copies=(), error="", temporary=True))
        results = on_hosts({h: [] for h in by_host}, lambda h, _: self.fleet.link(h).fetch_backup(
            stack, name, _target(repo), [(p.instance, p.archive) for p in by_host[h]]))
        failed = [(h, e) for h, e in results.items() if isinstance(e, RackfireError)]
        if failed:
            self.snapshots.remove(stack, name, actor)
            host, error = failed[0]
            raise type(error)(f"backup {backup.ref} could not be read back on host {host}: "
                              f"{error.message}", hint=error.hint or "nothing was changed")
        frozen = {c.instance: c.frozen_ms for c in snap.copies}
        copies = tuple(SnapshotCopy(p.key.name, host, tuple((d.name, d.size, d.used)
                                                             for d in p.disks),
                                    "restore", frozen.get(p.key.name, 0.0))
                       for host, parts in results.items()
                       if not isinstance(parts, RackfireError) for p in parts)
        self.store.snapshots.finish(stack, name, SnapshotState.READY, copies)
        self.commands.event(actor, target, backup.ref, "backup restore",
                            f"read back from {backup.repository} onto "
                            f"{', '.join(sorted(by_host))}")
        return self.snapshots.restore(stack, name, to, True, actor)

    # the schedule -----------------------------------------------------------------------

    def run_schedule(self, stop: threading.Event) -> None:
        while not stop.wait(SCHEDULE_LOOK):
            try:
                self.due(time.time())
                self.sweep()
            except Exception:  # one bad look must not end the schedule
                log.exception("the backup schedule failed; looking again")

    def sweep(self) -> None:
        """Remove the snapshots read back from backups that no restore needs any more."""
        for snap in self.store.snapshots.of_stack():
            if snap.temporary and snap.state is SnapshotState.READY and \
                    not self.store.snapshots.seeded(snap.stack, snap.name):
                try:
                    self.snapshots.remove(snap.stack, snap.name, CONTROLLER)
                except RackfireError as e:
                    log.warning("%s, read back for a restore, stays: %s", snap.ref, e.message)

    def due(self, now: float) -> list[str]:
        """Take each role's backup that is due, then apply its retention: what was taken."""
        taken = []
        with self._schedule_lock:
            for rec in self.store.stacks():
                if rec.deleting:
                    continue
                for role in rec.spec.roles:
                    if role.backup is None or not role.count:
                        continue
                    mine = [b for b in self.store.backups.of_stack(rec.name)
                            if b.role == role.name and b.state is BackupState.READY]
                    if mine and now - max(b.created for b in mine) < role.backup.every:
                        continue
                    try:
                        b = self.create(Target(rec.name, role.name), role.backup.to, None,
                                        "schedule")
                    except RackfireError as e:
                        log.warning("scheduled backup of %s/%s: %s", rec.name, role.name,
                                    e.message)
                        continue
                    taken.append(b.ref)
                    self._retain([*mine, b], role.backup.keep)
        return taken

    def _retain(self, backups: list[Backup], keep: Keep) -> None:
        kept = retained([(b.name, b.created) for b in backups], keep)
        for b in backups:
            if b.name not in kept:
                try:
                    self.remove(b.stack, b.name, CONTROLLER)
                except RackfireError as e:
                    log.warning("retention of %s: %s", b.ref, e.message)

    # parts ------------------------------------------------------------------------------

    def _repository(self, name: str) -> Repository:
        repo = self.store.repositories.get(name)
        if repo is None:
            raise NotFound(f"no backup repository named {name}",
                           hint="add one: `rackfire backup repo add NAME URL`")
        return repo

    def _forget(self, repo: Repository, archives: list[str], strict: bool = False) -> None:
        if not archives:
            return
        try:
            self._home().forget_backups(_target(repo), archives)
        except RackfireError:
            if strict:
                raise
            log.warning("archives of a failed backup were left in %s", repo.name)

    def _home(self) -> HostLink:
        """Where calls that need no host's data go (open, verify, forget): the server's."""
        return self.fleet.home

    def _live_hosts(self) -> list[str]:
        """The hosts that may take the archives: the joined hosts that are up, the server's
        own first where it runs instances."""
        now = time.time()
        joined = [h.name for h in self.fleet.registry.hosts()
                  if not self.fleet.liveness.gone(h, now)]
        return ([self.fleet.server_host] if self.fleet.local_pool else []) + joined \
            or [self.fleet.server_host]


def retained(backups: list[tuple[str, float]], keep: Keep) -> set[str]:
    """The names a retention keeps, as restic's forget decides: the newest `last`, and the
    newest of each of the newest `hourly` hours (days, weeks, months) that have one."""
    newest = sorted(backups, key=lambda b: b[1], reverse=True)
    kept = {name for name, _ in newest[:keep.last]}
    buckets: list[tuple[int, Callable[[float], str]]] = [
        (keep.hourly, lambda t: time.strftime("%Y-%m-%d %H", time.gmtime(t))),
        (keep.daily, lambda t: time.strftime("%Y-%m-%d", time.gmtime(t))),
        (keep.weekly, lambda t: time.strftime("%G-%V", time.gmtime(t))),
        (keep.monthly, lambda t: time.strftime("%Y-%m", time.gmtime(t)))]
    for count, bucket in buckets:
        seen: set[str] = set()
        for name, created in newest:
            b = bucket(created)
            if b not in seen and len(seen) < count:
                seen.add(b)
                kept.add(name)
    return kept


def _target(repo: Repository) -> BackupTarget:
    return BackupTarget(repo.url, repo.password, repo.env)
