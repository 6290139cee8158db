"""Network attachments: how an instance is on its stack's network, as a value a runtime is
given (the agent makes it from the request and the runtime's `Capabilities.network`).

The value is pure data (names and addresses, derived from the instance id and its request);
`ensure`, `announce` and `remove` do the wiring it names, here in net/, so a runtime never
makes links itself. The runtime calls them because it owns the order: the attachment is made
sure of at each start (after a host reboot /run is empty), after the checks that refuse
before any change, and removed with the rest of the instance by `destroy`.

A veth now; a VM's tap (on the same bridge) is another value here later.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from rackfire.errors import PrereqError, RackfireError
from rackfire.model.instance import InstanceRequest
from rackfire.model.runtime import NetworkMode
from rackfire.net import garp, links, names
from rackfire.net.nsenter import netns_path

log = logging.getLogger("rackfire.net")

HOST_IP = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class HostNetwork:
    """The host's own network: nothing to make, and the instance's address is the host's."""

    ip: str = HOST_IP

    @property
    def mode(self) -> NetworkMode:
        return NetworkMode.HOST


@dataclass(frozen=True, slots=True)
class VethAttachment:
    """A netns `rf-<id>` holding `eth0` with `ip/prefix` and a default route via `gateway`,
    the peer of the host's veth `rfv<hash>`, a port of the stack's bridge."""

    instance: str  # the instance id: names the netns and the host veth
    stack: str
    ip: str
    prefix: int
    gateway: str

    @property
    def mode(self) -> NetworkMode:
        return NetworkMode.VETH

    @property
    def netns(self) -> str:
        return names.netns_name(self.instance)

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)

    @property
    def host_link(self) -> str:
        return names.veth_name(self.instance)


Attachment = HostNetwork | VethAttachment


def attachment(mode: NetworkMode, req: InstanceRequest) -> Attachment:
    """The attachment of `req`'s instance for a runtime that attaches by `mode`. Pure."""
    if mode is NetworkMode.VETH:
        net = req.network
        return VethAttachment(req.key.id, net.stack, req.ip, net.prefix, net.gateway)
    return HostNetwork()


def ensure(att: Attachment) -> None:
    """Make the attachment exist as it says; an intact one is kept (a running instance keeps
    its network), leftovers of an interrupted one are repaired."""
    if isinstance(att, VethAttachment):
        links.attach_instance(att.instance, att.stack, att.ip, att.prefix, att.gateway)


def remove(mode: NetworkMode, instance_id: str) -> None:
    """Remove what an attachment of `mode` made for the instance; missing parts are fine.
    By id, not by value: `destroy` has only the instance's key."""
    if mode is NetworkMode.VETH:
        links.detach_instance(instance_id)


def announce(att: Attachment) -> None:
    """Gratuitous ARP from the instance, so that every host's bridge learns where its MAC is
    now (after a move, at once). Best effort, on a thread of its own: the start does not
    wait for it, and a failure only costs the time until the bridges learn it anyway."""
    if not isinstance(att, VethAttachment):
        return

    def send() -> None:
        try:
            garp.announce(att.netns, links.PEER_NAME, att.ip)
        except (RackfireError, OSError) as e:
            log.warning("gratuitous ARP for %s (%s): %s", att.instance, att.ip, e)

    threading.Thread(target=send, name=f"garp-{att.instance}", daemon=True).start()


def expect_veth(att: Attachment, runtime: str) -> VethAttachment:
    """`att`, for a runtime that attaches by veth only; refused before any change else."""
    if not isinstance(att, VethAttachment):
        raise PrereqError(f"the {runtime} runtime attaches instances by veth, "
                          f"not by {att.mode}")
    return att
