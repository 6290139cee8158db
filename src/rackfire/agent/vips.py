"""The floating addresses this host holds for its stacks (a stack's `vip`), on the interface
of its underlay address (net/vip.py). Each held one is recorded in `<stack dir>/vip`, so
a restarted agent knows it, and `teardown_stack` removes it."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from rackfire.errors import PrereqError
from rackfire.net import vip as net_vip

log = logging.getLogger("rackfire.agent")
FILE = "vip"


class Vips:
    def __init__(self, stacks_dir: Path) -> None:
        self.stacks_dir = stacks_dir
        self.address = ""  # this host's underlay address (the agent's advertised one)

    def underlay(self) -> tuple[str, str] | None:
        """(device, network) of this host's underlay address; None if not known here."""
        return net_vip.underlay(self.address) if self.address else None

    def hold(self, stack: str, vip: str) -> None:
        """Hold `vip` for `stack` here ("": hold none), releasing the one it held before.
        Refused, before any change, if `vip` is not on this host's underlay network."""
        try:
            ipaddress.IPv4Address(vip or "0.0.0.0")
        except ValueError:
            raise PrereqError(f"not an IPv4 address: {vip!r}") from None
        found = self.underlay()
        if vip and (found is None or ipaddress.IPv4Address(vip)
                    not in ipaddress.IPv4Network(found[1])):
            where = f"{found[1]} on {found[0]}" if found else "unknown"
            raise PrereqError(f"the floating address {vip} is not on this host's underlay "
                              f"network ({where})")
        record = self.stacks_dir / stack / FILE
        old = _read(record)
        if old and old != vip:
            self._release(old)
            record.unlink(missing_ok=True)
        if vip and found is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(vip + "\n")  # first: a crash after the add still finds it
            if net_vip.hold(found[0], vip):
                log.info("holding the floating address %s of stack %s on %s", vip, stack,
                         found[0])

    def release(self, stack: str) -> None:
        self.hold(stack, "")

    def held(self) -> dict[str, str]:
        """Stack -> the floating address it holds here now (recorded and on the interface)."""
        return {stack: v for stack, v, _ in self._held()}

    def targets(self, deadline: float) -> list[dict[str, Any]]:
        """What the watchdog removes when the lease lapses (`deadline`, monotonic): every
        held address, before the controller gives it to another host."""
        return [{"kind": "address", "dev": dev, "address": v, "deadline": deadline}
                for _, v, dev in sorted(self._held())]

    def _held(self) -> list[tuple[str, str, str]]:
        """(stack, address, device) of each recorded address that is on its interface. Asked
        at every look of the agent: no netlink dump while nothing is recorded."""
        records = {r.parent.name: _read(r) for r in self.stacks_dir.glob(f"*/{FILE}")}
        on = net_vip.owned() if records else {}
        return [(stack, v, on[v]) for stack, v in records.items() if v in on]

    def _release(self, vip: str) -> None:
        dev = net_vip.owned().get(vip)
        if dev is not None and net_vip.release(dev, vip):
            log.info("released the floating address %s", vip)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
