"""Floating addresses on this host's underlay (a stack's `vip`; control/vip.py picks the
host that holds one).

A held address is a /32 on the interface that has the host's own underlay address, labelled
`<dev>:rfvip` so it can be found (`owned`) and removed after a restart, and announced with
gratuitous ARP so the other machines on the segment send to this host at once rather than
when their neighbour entry for it ages out. The agent feeds each held address to the
watchdog (agent/watchdog.py), which removes it when the host's lease lapses: the controller
gives it to another host then.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from rackfire.errors import ExecError, RackfireError
from rackfire.net import garp

log = logging.getLogger("rackfire.net")
LABEL = "rfvip"  # the address label's suffix: `<dev>:rfvip`
_IFNAMSIZ = 15  # a label is at most an interface name's length
_EEXIST, _EADDRNOTAVAIL = 17, 99


@contextmanager
def _rtnl() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def label(dev: str) -> str:
    """`<dev>:rfvip`, or the device's own name where that would be too long for a label."""
    mine = f"{dev}:{LABEL}"
    return mine if len(mine) <= _IFNAMSIZ else dev


def underlay(ip: str) -> tuple[str, str] | None:
    """(device, network) of the interface that holds `ip`, such as ("eth0", "10.0.0.0/24");
    None if no interface here holds it."""
    with _rtnl() as ipr:
        for msg in ipr.get_addr(family=2, address=ip):
            dev = _name(ipr, msg["index"])
            if dev:
                net = ipaddress.IPv4Interface(f"{ip}/{msg['prefixlen']}").network
                return dev, str(net)
    return None


def owned() -> dict[str, str]:
    """Every floating address rackfire holds on this host (by its label) -> its device."""
    out = {}
    with _rtnl() as ipr:
        for msg in ipr.get_addr(family=2):
            name = msg.get_attr("IFA_LABEL") or ""
            if name.endswith(f":{LABEL}") and msg["prefixlen"] == 32:
                out[str(msg.get_attr("IFA_ADDRESS"))] = name.rpartition(":")[0]
    return out


def hold(dev: str, vip: str) -> bool:
    """Put `vip` on `dev` and announce it; whether it was added now (False: it was there).
    An announcement that fails is logged: the address works, neighbours learn it later."""
    with _rtnl() as ipr:
        index = _index(ipr, dev)
        try:
            ipr.addr("add", index=index, address=vip, prefixlen=32, label=label(dev))
        except NetlinkError as e:
            if e.code != _EEXIST:
                raise ExecError(f"cannot add the floating address {vip} to {dev}: "
                                    f"{e.args[-1]}") from e
            return False
    try:
        garp.announce(None, dev, vip)
    except RackfireError as e:
        log.warning("floating address %s: %s", vip, e.message)
    return True


def release(dev: str, vip: str) -> bool:
    """Take `vip` off `dev`; whether it was there."""
    with _rtnl() as ipr:
        try:
            ipr.addr("del", index=_index(ipr, dev), address=vip, prefixlen=32)
        except (NetlinkError, ExecError) as e:
            if isinstance(e, NetlinkError) and e.code != _EADDRNOTAVAIL:
                raise ExecError(f"cannot remove the floating address {vip} from {dev}: "
                                    f"{e.args[-1]}") from e
            return False
    return True


def _index(ipr: Any, dev: str) -> int:
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise ExecError(f"no interface {dev} on this host")
    return int(found[0])


def _name(ipr: Any, index: int) -> str:
    links = ipr.get_links(index)
    return str(links[0].get_attr("IFLA_IFNAME")) if links else ""
