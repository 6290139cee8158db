"""Real agents on the test bed: three simulated hosts (a netns each, joined by an underlay
bridge), each running its own `rackfire agent` process that joins the server over the
underlay, reports, and runs an instance inside its host when the controller asks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rackfire.model.instance import InstanceKey, InstanceRequest, InstanceState, NetworkConfig
from rackfire.model.stack import Resources, RuntimeKind
from rackfire.net import names
from rackfire.testbed.bed import Bed

from harness import Server, agent_client, host_traces, unique, wait_for

pytestmark = pytest.mark.root
AGENT_PORT = 7481


@pytest.fixture
def bed_server(tmp_path: Path) -> Iterator[tuple[Bed, Server]]:
    bed = Bed(3)
    srv = Server(tmp_path / "data", listen="0.0.0.0")
    try:
        bed.create()
        srv.start()
        yield bed, srv
    finally:
        srv.stop()
        bed.destroy()  # the agents too, by pid
        for h in bed.hosts:
            shutil.rmtree(bed.runc_root(h), ignore_errors=True)


def test_agents_on_simulated_hosts(bed_server: tuple[Bed, Server], tmp_path: Path) -> None:
    bed, server = bed_server
    token = server.cli("token", "create", "--uses", "3").stdout.split()[0]
    url = f"http://{bed.controller_ip}:{server.port}"
    for n, h in enumerate(bed.hosts, 1):
        bed.start_agent(h, url, token, str(tmp_path / f"agent-{h.name}"), {"rack": f"r{n}"},
                        log=str(tmp_path / f"agent-{h.name}.log"))

    def joined() -> dict[str, dict[str, object]]:
        rows = json.loads(server.cli("hosts", "--json").stdout)
        found = {h["name"]: h for h in rows if not h["local"] and h["address"]}
        return found if len(found) == 3 else {}

    hosts = wait_for(joined, 60, "three agents to join over the underlay")
    for n, h in enumerate(bed.hosts, 1):
        assert hosts[h.name]["labels"] == {"rack": f"r{n}"}
        assert hosts[h.name]["address"] == f"{h.ip}:{AGENT_PORT}"  # its underlay address
        assert hosts[h.name]["state"] == "ready"
    # Three racks, each able to take what the others hold: N+1 by host and by rack.
    report = json.loads(server.cli("capacity", "--json").stdout)
    assert len(report["racks"]["losses"]) == 3

    # The controller's calls reach host 2's agent and run an instance inside host 2.
    h2 = bed.hosts[1]
    remote = agent_client(h2.name, f"{h2.ip}:{AGENT_PORT}", tmp_path / f"agent-{h2.name}")
    stack = unique("bedag")
    try:
        # The server's image, fetched by the host as an instance's layer.
        server.cli("image", "build", "base", "--from", "host")
        [image] = [i for i in json.loads(server.cli("image", "ls", "--json").stdout)
                   if i["name"] == "base"]
        remote.ensure_layer(image["digest"])
        net = NetworkConfig(stack, "10.89.252.0/24", "10.89.252.1", 24)
        remote.ensure_network(net)
        box = InstanceKey(stack, "box", 0)
        remote.create(InstanceRequest(
            key=box, action_id="a1", runtime=RuntimeKind.CONTAINER, image_digest=image["digest"],
            command=("sleep", "100000"), env=(), resources=Resources(memory=32 << 20,
                                                                      disk=32 << 20),
            files=(), ip="10.89.252.2", network=net, spec_hash="s", spec_fields=(),
            config_hash="c"))
        [f] = remote.observe(stack)
        assert (f.state, f.host) == (InstanceState.RUNNING, h2.name)
        # Its veth and the stack's bridge are in host 2's namespace, not on the machine's.
        inside = bed.run_in(h2, ["ip", "-o", "link"]).stdout
        assert names.veth_name(box.id) in inside and names.bridge_name(stack) in inside
        assert names.bridge_name(stack) not in bed.run_in(bed.hosts[0], ["ip", "-o", "link"]
                                                          ).stdout
        # The other hosts' agents do not see it: each has its own runc root.
        h1 = bed.hosts[0]
        other = agent_client(h1.name, f"{h1.ip}:{AGENT_PORT}", tmp_path / f"agent-{h1.name}")
        assert other.observe(stack) == []
        other.close()
        remote.destroy(box, 2.0)
        remote.teardown_stack(stack)
        assert remote.observe(stack) == []
    finally:
        remote.close()
    assert host_traces(stack) == []

