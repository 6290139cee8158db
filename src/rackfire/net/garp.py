"""Gratuitous ARP: an instance announces its own IP and MAC from its own interface.

After an instance moves to another host (same IP, same MAC, see `links.instance_mac`), the
other hosts' bridges still send its frames to the old host over VXLAN until their learned
FDB entries age out (300 s), or until a frame from it crosses the tunnel. Announcing at
start makes that happen at once: each gratuitous frame is a broadcast, replicated to every
peer, which learns the MAC behind this host; instances' neighbour caches are refreshed too.

Each round sends three broadcast frames from the instance's MAC:
- a gratuitous ARP request and reply (sender = target = its IP), as `arping -U` and
  `arping -A` would: for the neighbour caches and bridges that see them;
- a frame of the IEEE 802 local experimental EtherType 0x88B5 (`rackfire announce <ip>`).
  The stack's VXLAN port has `neigh_suppress` on (see `vxlan`), and a bridge never floods a
  gratuitous ARP to such a port (the kernel's `br_do_proxy_suppress_arp`), so the ARP frames
  stay on this host; this one is plain broadcast, replicated to every peer, whose bridge and
  VXLAN device learn the MAC behind this host from it. Instances drop it (no protocol
  handler for that EtherType).
The raw socket is made inside the instance's netns (nsenter: the calling thread steps in and
out, no fork) and sends only; its protocol is 0, so nothing queues up on it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

from rackfire.errors import ExecError, PrereqError
from rackfire.net.nsenter import socket_in_netns

ETH_P_ARP = 0x0806
ETH_P_ANNOUNCE = 0x88B5  # IEEE 802 local experimental EtherType 1
_BROADCAST = b"\xff" * 6
_ARP_REQUEST, _ARP_REPLY = 1, 2
_MIN_FRAME = 60  # Ethernet's minimum without the FCS: shorter frames are padded


def arp_frame(mac: bytes, ip: str, op: int) -> bytes:
    """A broadcast gratuitous ARP frame (request or reply) from `mac` for `ip`."""
    addr = ipaddress.IPv4Address(ip).packed
    target_mac = mac if op == _ARP_REPLY else b"\0" * 6
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, addr, target_mac, addr)
    data = _BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp
    return data.ljust(_MIN_FRAME, b"\0")


def announce_frame(mac: bytes, ip: str) -> bytes:
    """A broadcast frame that crosses the VXLAN tunnel where gratuitous ARP does not."""
    payload = f"rackfire announce {ipaddress.IPv4Address(ip)}".encode()
    data = _BROADCAST + mac + struct.pack("!H", ETH_P_ANNOUNCE) + payload
    return data.ljust(_MIN_FRAME, b"\0")


def announce(netns: str | None, ifname: str, ip: str, count: int = 3,
             interval: float = 0.05) -> None:
    """Send `count` rounds, `interval` s apart, of gratuitous ARP (a request and a reply)
    and the announce frame for `ip` from `ifname` inside `netns` (None: this process's, a
    host's floating address). Raises ExecError if they cannot be sent."""
    try:
        ipaddress.IPv4Address(ip)
    except ValueError as e:
        raise PrereqError(f"gratuitous ARP: not an IPv4 address: {ip!r}") from e
    where = netns or "this host's netns"
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) if netns is None \
            else socket_in_netns(netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as e:
        raise ExecError(f"gratuitous ARP for {ip}: no packet socket in {where}: {e}") from e
    with sock:
        try:
            sock.bind((ifname, 0))
            mac = sock.getsockname()[4]  # the interface's hardware address
            if len(mac) != 6:
                raise ExecError(f"gratuitous ARP: {ifname} in {where} is not Ethernet")
            frames = [arp_frame(mac, ip, _ARP_REQUEST), arp_frame(mac, ip, _ARP_REPLY),
                      announce_frame(mac, ip)]
            for n in range(count):
                if n:
                    time.sleep(interval)
                for f in frames:
                    sock.send(f)
        except OSError as e:
            raise ExecError(f"gratuitous ARP for {ip} from {ifname} in {where}: {e}") from e
