"""The call table over HTTP: a real `rackfire agent` process, joined to a real server,
driven through RemoteAgent as the controller drives a joined host: the server's image
fetched, a network, an instance made, observed, measured and removed, with the agent's
errors coming back as the same errors."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from rackfire.agent.remote import RemoteAgent
from rackfire.errors import Conflict, PrereqError, RackfireError
from rackfire.model.instance import InstanceKey, InstanceRequest, InstanceState, NetworkConfig
from rackfire.model.stack import Resources, RuntimeKind

from harness import (
    Server,
    agent_client,
    free_port,
    host_traces,
    reported_address,
    start_agent,
    unique,
)

pytestmark = pytest.mark.root


def test_a_joined_agent_runs_an_instance_for_the_controller(server: Server,
                                                            tmp_path: Path) -> None:
    token = server.cli("token", "create").stdout.split()[0]
    port = free_port()
    agent_dir = tmp_path / "agent"
    proc = start_agent(agent_dir, "--join", server.url, "--token", token, "--name", "far",
                       "--listen", f"127.0.0.1:{port}")
    stack = unique("ra")
    remote: RemoteAgent | None = None
    try:
        assert reported_address(server, "far") == f"127.0.0.1:{port}"
        remote = agent_client("far", f"127.0.0.1:{port}", agent_dir)

        assert remote.info().name == "far"
        assert remote.capacity().cpus >= 1
        # Images are the server's: a joined host fetches the layer an instance needs.
        server.cli("image", "build", "base", "--from", "host")
        [image] = [i for i in json.loads(server.cli("image", "ls", "--json").stdout)
                   if i["name"] == "base"]
        remote.ensure_layer(image["digest"])
        net = NetworkConfig(stack, "10.89.251.0/24", "10.89.251.1", 24)
        remote.ensure_network(net)
        key0 = InstanceKey(stack, "box", 0)
        req = InstanceRequest(
            key=key0, action_id="a1", runtime=RuntimeKind.CONTAINER,
            image_digest=image["digest"], command=("sleep", "100000"), env=(("A", "1"),),
            resources=Resources(memory=32 << 20, disk=32 << 20, pids=20),
            files=(("/etc/box.conf", "hi"),), ip="10.89.251.2", network=net,
            spec_hash="s1", spec_fields=(("command", "c1"),), config_hash="c1")
        remote.create(req)
        [f] = remote.observe(stack)
        assert (f.key, f.state, f.ip, f.host) == (key0, InstanceState.RUNNING, "10.89.251.2",
                                                  "far")
        [st] = remote.stats(stack)
        assert st.memory_limit == 32 << 20 and (st.memory_used or 0) > 0
        # Its errors come back as the same errors, with their messages.
        with pytest.raises(PrereqError, match="invalid digest"):
            remote.ensure_layer("not-a-digest")
        with pytest.raises(Conflict, match="exists on host far already"):
            remote.create(replace(req, action_id="a2"))
        wrong = RemoteAgent("far", f"127.0.0.1:{port}", "not-the-key")
        with pytest.raises(RackfireError, match="wrong agent key"):
            wrong.info()
        wrong.close()
        remote.destroy(key0, 2.0)
        remote.teardown_stack(stack)
        assert remote.observe(stack) == []
        assert host_traces(stack) == []
    finally:
        if remote is not None:
            remote.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0

