"""ICMP echo from inside a netns, one request at a time with DF set (`ping -M do -s SIZE`):
what the tests of a stack network across the bed's hosts measure reachability, the MTU and
round trips with.
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import time

from rackfire.net.nsenter import socket_in_netns


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(x) for x in struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_ping(netns: str, dst: str, *, size: int = 56, count: int = 3,
              timeout: float = 1.0) -> list[float | None]:
    """Echo requests of `size` payload bytes from `netns` with DF set (`ping -M do -s SIZE`),
    one at a time; the RTT of each in seconds, None for a lost one. (ping(8) is not installed
    here; a raw socket needs only root.) A packet over the path MTU raises OSError EMSGSIZE
    when this end knows the MTU, and is lost when a hop further on drops it."""
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ip_mtu_discover, ip_pmtudisc_do = 10, 2  # from <linux/in.h>; not in the socket module
    ident = secrets.randbits(16)
    rtts: list[float | None] = []
    with sock:
        sock.setsockopt(socket.IPPROTO_IP, ip_mtu_discover, ip_pmtudisc_do)
        for seq in range(count):
            payload = secrets.token_bytes(size)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq)
            sent = time.perf_counter()
            sock.sendto(packet + payload, (dst, 0))
            rtts.append(_await_echo(sock, dst, ident, seq, sent, timeout))
    return rtts


def _await_echo(sock: socket.socket, dst: str, ident: int, seq: int, sent: float,
                timeout: float) -> float | None:
    while (left := sent + timeout - time.perf_counter()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data, (src, _) = sock.recvfrom(65535)
        header = (data[0] & 0x0F) * 4  # a raw socket returns the IP header too
        kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[header:header + 8])
        if src == dst and kind == 0 and (rid, rseq) == (ident, seq):
            return time.perf_counter() - sent
    return None
