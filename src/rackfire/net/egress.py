"""A stack's way out: its instances reach the outside world through their host, by NAT.

Per stack and host: one nftables table `inet rackfire-<stack>` holding all of it, so that a
stack's rules are found, rewritten and removed as one thing:

- `postrouting` (nat): what comes from the stack's subnet and leaves by any interface but the
  stack's bridge is masqueraded to the address of the interface it leaves by. The VXLAN
  device is a port of the bridge, and its tunnel packets come from the host's own underlay
  address, so traffic between instances (on one host or across hosts) is never rewritten.
- `forward` (filter): traffic within the bridge is accepted (br_netfilter passes bridged
  frames through this hook too: `bridge-nf-call-iptables` is 1 by default); into the bridge,
  only replies and what the host itself DNATed there (a published port) pass, so neither
  another stack nor the host's other networks can open a connection to an instance now that
  the host forwards; from the instances in the set `no_egress` (roles with `egress: false`)
  nothing is forwarded out, rejected with "administratively prohibited" so an application
  fails at once instead of hanging. They still reach their stack (bridged) and their host
  (its own addresses are input, not forward).

Every chain's policy is accept: the host's own firewall, and other stacks' tables, decide
the rest (a drop in any table is final; an accept here is not).

`ensure_egress` converges: it reads the table (~3 ms, one `nft` process) and rewrites it only
if it differs from what is wanted, then in one transaction (`add`, `delete`, `add` of the
table and everything in it), so the rules are never half there, and connections already NATed
keep their conntrack entries through a rewrite: flipping a role's `egress` is live. A table
left by a previous agent is adopted so (and an externally flushed one repaired). Every rule
carries a comment naming the stack and a digest of the whole ruleset, which is what "differs"
compares, with the set's elements.

The host's `net.ipv4.ip_forward` is turned on (after the table is in place, so forwarding
never starts without the stack's rules) and never turned off: other programs (Docker,
libvirt, another rackfire data dir) rely on it the same way and cannot tell who turned it
on; turning it off at the last stack's teardown would cut their traffic. It is the one thing
a teardown leaves changed, and is logged when it is changed.

`nft` (nftables 1.0.6 here) is run with argv and JSON on stdin; nothing goes through a shell.
Like the rest of net/, everything acts on the calling thread's network namespace (a
subprocess inherits it), and a missing table on removal is success.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable
from typing import Any

from rackfire.errors import ExecError, PrereqError
from rackfire.model.stack import NAME_PATTERN
from rackfire.net.mesh import mesh_names
from rackfire.net.names import bridge_name

log = logging.getLogger("rackfire.net")

FAMILY = "inet"
TABLE_PREFIX = "rackfire-"
NO_EGRESS_SET = "no_egress"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
NFT_TIMEOUT = 30.0

# Read-compare-write as one step: two passes for one stack never interleave their writes.
_lock = threading.Lock()


def table_name(stack: str) -> str:
    """The stack's nftables table (family inet) on every host: `rackfire-<stack>`."""
    if not re.fullmatch(NAME_PATTERN, stack):
        raise PrereqError(f"invalid stack name {stack!r}")
    return TABLE_PREFIX + stack


def _meta(key: str, op: str, value: str) -> dict[str, Any]:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def _saddr(right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                      "right": right}}


def ruleset(stack: str, subnet: str, no_egress: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The nft JSON commands that make the stack's table exactly this, atomically. Pure."""
    table = table_name(stack)
    try:
        net = ipaddress.IPv4Network(subnet)
        denied = sorted({ipaddress.IPv4Address(ip) for ip in no_egress})
    except ValueError as e:
        raise PrereqError(f"egress of stack {stack}: {e}") from e
    if any(ip not in net for ip in denied):
        raise PrereqError(f"egress of stack {stack}: an address opted out of egress is not "
                          f"in the stack's subnet {net}")
    bridge = bridge_name(stack)
    inside, to_bridge = _meta("iifname", "==", bridge), _meta("oifname", "==", bridge)
    accept, drop = {"accept": None}, {"drop": None}
    rules: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("forward", "within the stack", [inside, to_bridge, accept]),
        ("forward", "replies into the stack",
         [to_bridge, {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                "right": ["established", "related"]}}, accept]),
        ("forward", "published by the host",
         [to_bridge, {"match": {"op": "in", "left": {"ct": {"key": "status"}},
                                "right": "dnat"}}, accept]),
        ("forward", "nothing else opens a connection into the stack", [to_bridge, drop]),
        ("forward", "egress: false",
         [inside, _saddr(f"@{NO_EGRESS_SET}"),
          {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]),
        ("postrouting", "egress through the host",
         [_saddr({"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}),
          _meta("oifname", "!=", bridge),
          # nor by the host's own port into the stack (net/mesh.py): its traffic from the
          # host's address in the subnet is the stack's, and masqueraded it never answers
          _meta("oifname", "!=", mesh_names(stack)[0]), {"masquerade": None}]),
    ]
    base = {"family": FAMILY, "table": table}
    body: list[dict[str, Any]] = [
        {"add": {"set": {**base, "name": NO_EGRESS_SET, "type": "ipv4_addr"}}},
        {"add": {"chain": {**base, "name": "forward", "type": "filter", "hook": "forward",
                           "prio": 0, "policy": "accept"}}},
        {"add": {"chain": {**base, "name": "postrouting", "type": "nat",
                           "hook": "postrouting", "prio": 100, "policy": "accept"}}},
    ]
    if denied:
        body.append({"add": {"element": {**base, "name": NO_EGRESS_SET,
                                          "elem": [str(ip) for ip in denied]}}})
    digest = hashlib.sha1(json.dumps([body, rules], sort_keys=True).encode(),
                          usedforsecurity=False).hexdigest()[:12]
    body += [{"add": {"rule": {**base, "chain": chain, "expr": expr,
                               "comment": _comment(stack, why, digest)}}}
             for chain, why, expr in rules]
    # `add` first so that `delete` finds a table either way; one transaction, so the old
    # table is replaced by the new one at once.
    return [{"add": {"table": {"family": FAMILY, "name": table}}},
            {"delete": {"table": {"family": FAMILY, "name": table}}},
            {"add": {"table": {"family": FAMILY, "name": table}}}, *body]


def _comment(stack: str, why: str, digest: str) -> str:
    return f"rackfire {stack} {digest}: {why}"


def _summary(commands: Iterable[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(rule comments in order, the no_egress set's elements): what `differs` compares, from
    `ruleset`'s commands or from a listing of the table."""
    comments, elements = [], []
    for item in commands:
        obj = item.get("add", item)
        if "rule" in obj:
            comments.append(str(obj["rule"].get("comment", "")))
        elif "element" in obj:
            elements += [str(e) for e in obj["element"]["elem"]]
        elif "set" in obj and obj["set"].get("name") == NO_EGRESS_SET:
            elements += [str(e) for e in obj["set"].get("elem", [])]
    return comments, sorted(elements)


def _nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("nft") is None:
        raise ExecError("a stack's egress needs nftables (`nft`), which is not installed here",
                        hint="apt-get install nftables (make demo and make test do)")
    try:
        return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                              timeout=NFT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ExecError(f"nft {' '.join(args)}: {e}") from e


def _apply(commands: list[dict[str, Any]], what: str) -> None:
    done = _nft("-j", "-f", "-", stdin=json.dumps({"nftables": commands}))
    if done.returncode != 0:
        raise ExecError(f"{what}: nft: {done.stderr.strip() or done.returncode}")


def _listing(table: str) -> list[dict[str, Any]] | None:
    """The table's objects as `nft -j list table` gives them; None if there is no table."""
    done = _nft("-j", "list", "table", FAMILY, table)
    if done.returncode != 0:
        if "No such file or directory" in done.stderr:
            return None
        raise ExecError(f"list nft table {table}: {done.stderr.strip() or done.returncode}")
    items: list[dict[str, Any]] = json.loads(done.stdout)["nftables"]
    return items


def ensure_egress(stack: str, subnet: str, no_egress: Iterable[str] = ()) -> bool:
    """Make the stack's table exactly what `ruleset` says and forwarding on; whether the
    table was (re)written."""
    wanted = ruleset(stack, subnet, no_egress)
    table = table_name(stack)
    with _lock:
        present = _listing(table)
        changed = present is None or _summary(present) != _summary(wanted)
        if changed:
            _apply(wanted, f"egress of stack {stack}")
    _forwarding_on()
    return changed


def remove_egress(stack: str) -> None:
    """Delete the stack's table; a missing one (or no nftables at all) is fine."""
    if shutil.which("nft") is None:
        return  # nothing can have made a table
    table = table_name(stack)
    with _lock:
        _apply([{"add": {"table": {"family": FAMILY, "name": table}}},
                {"delete": {"table": {"family": FAMILY, "name": table}}}],
               f"remove egress of stack {stack}")


def owned_tables() -> list[str]:
    """rackfire's nftables tables in this network namespace (`inet rackfire-*`), sorted."""
    if shutil.which("nft") is None:
        return []
    done = _nft("-j", "list", "tables", FAMILY)
    if done.returncode != 0:
        raise ExecError(f"list nft tables: {done.stderr.strip() or done.returncode}")
    return sorted(str(t["table"]["name"]) for t in json.loads(done.stdout)["nftables"]
                  if "table" in t and str(t["table"]["name"]).startswith(TABLE_PREFIX))


def _forwarding_on() -> None:
    # /proc/sys/net follows the calling thread's netns, as `nft` does.
    with open(IP_FORWARD) as f:
        if f.read().strip() == "1":
            return
    with open(IP_FORWARD, "w") as f:  # a sysctl ignores a write after a read (not at offset 0)
        f.write("1")
    log.warning("turned on net.ipv4.ip_forward (stack egress); rackfire never turns it off")
