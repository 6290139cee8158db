"""Image layers travel to a joined host on demand: a real `rackfire agent` process, joined to
a real server, asked (through RemoteAgent, as the controller asks) to ensure a layer that
only the server has. It fetches it once, verified by its digest, keeps it unnamed, runs an
instance from it, and collects it once no instance uses it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from rackfire.agent.remote import RemoteAgent
from rackfire.errors import ExecError, NotFound
from rackfire.images.store import ImageStore
from rackfire.images.tree import tree_digest
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


def test_a_joined_host_fetches_verifies_keeps_and_collects_a_layer(server: Server,
                                                                   tmp_path: Path) -> None:
    name = unique("img")
    server.cli("image", "build", name, "--from", "host")
    [image] = [i for i in json.loads(server.cli("image", "ls", "--json").stdout)
               if i["name"] == name]
    digest = image["digest"]

    token = server.cli("token", "create").stdout.split()[0]
    port = free_port()
    agent_dir = tmp_path / "agent"
    # No grace: collect_layers may take a fetched layer as soon as nothing uses it.
    proc = start_agent(agent_dir, "--join", server.url, "--token", token, "--name", "far",
                       "--listen", f"127.0.0.1:{port}", env={"RACKFIRE_LAYER_GRACE": "0"})
    stack = unique("lf")
    remote: RemoteAgent | None = None
    try:
        assert reported_address(server, "far") == f"127.0.0.1:{port}"
        remote = agent_client("far", f"127.0.0.1:{port}", agent_dir)

        # The joined host's own store, read from outside (one machine): empty at first.
        store = ImageStore(agent_dir / "images")
        assert store.by_digest(digest) is None
        remote.ensure_layer(digest)
        got = store.by_digest(digest)
        assert got is not None and got.fetched and got.name == "" and got.source == "host"
        assert tree_digest(got.rootfs, [f"bind:{b}" for b in got.host_binds]) == digest
        assert store.list() == []  # unnamed: the host's image list does not show it
        assert os.listdir(store.tmp) == []

        # A second call does not fetch again: it succeeds with the server down, and a layer
        # it does not have fails as a failed fetch, not as an offline agent.
        server.stop()
        remote.ensure_layer(digest)
        with pytest.raises(ExecError, match="fetching image layer cdcdcdcdcdcd"):
            remote.ensure_layer("cd" * 32)
        server.start()
        with pytest.raises(NotFound, match="controller has no image layer abababababab"):
            remote.ensure_layer("ab" * 32)
        assert os.listdir(store.tmp) == []

        # An instance runs from it; while it exists, the layer stays.
        net = NetworkConfig(stack, "10.89.250.0/24", "10.89.250.1", 24)
        remote.ensure_network(net)
        key0 = InstanceKey(stack, "box", 0)
        remote.create(InstanceRequest(
            key=key0, action_id="a1", runtime=RuntimeKind.CONTAINER, image_digest=digest,
            command=("sleep", "100000"), env=(), files=(),
            resources=Resources(memory=32 << 20, disk=32 << 20, pids=20), ip="10.89.250.2",
            network=net, spec_hash="s1", spec_fields=(), config_hash="c1"))
        [f] = remote.observe(stack)
        assert (f.key, f.state) == (key0, InstanceState.RUNNING)
        assert remote.collect_layers() == []
        assert store.by_digest(digest) is not None

        remote.destroy(key0, 2.0)
        remote.teardown_stack(stack)
        assert remote.collect_layers() == [digest]
        assert store.by_digest(digest) is None and os.listdir(store.layers) == []
        assert remote.collect_layers() == []
        # The server's own image is its own: untouched.
        assert name in server.cli("image", "ls").stdout
        assert host_traces(stack) == []
    finally:
        if remote is not None:
            remote.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0

