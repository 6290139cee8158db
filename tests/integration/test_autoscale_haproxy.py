"""Autoscaling on requests through a real HAProxy in runc containers: the web role scales out
when the lb in front of it (HAProxy, its stats read from inside it) sees more requests per
instance than the target, starting its warm instance first, losing no request, and
`rackfire autoscale` says why."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness import Server, unique, wait_for, write_stack

pytestmark = pytest.mark.root

PORT = 7765
STACK = """\
stack: {stack}
images: {{base: {{from: host}}}}
roles:
  web:
    image: base
    command: [python3, -m, http.server, "8000"]
    resources: {{memory: 64M, disk: 32M}}
    health: {{http: "http://127.0.0.1:8000/", interval: 1s}}
    scale: {{min: 1, max: 3, warm: 1, target: {{requests_per_instance: 5/s}}, cooldown: 10m}}
  lb:
    image: base
    command: [haproxy, -W, -db, -f, /etc/haproxy/haproxy.cfg]
    uses: [web]
    ports: ["{port}:80"]
    resources: {{memory: 64M, disk: 32M}}
    reload: {{signal: USR2}}
    files:
      /etc/haproxy/haproxy.cfg: |
        defaults
            mode http
            timeout connect 1s
            timeout client 10s
            timeout server 10s
        frontend www
            bind :80
            default_backend web
        backend web
        {{%- for w in roles.web.ready %}}
            server {{{{ w.name }}}} {{{{ w.ip }}}}:8000
        {{%- endfor %}}
        frontend monitor
            bind 127.0.0.1:8404
            stats enable
            stats uri /stats
"""


def test_requests_through_haproxy_scale_the_role_out(server: Server, tmp_path: Path) -> None:
    stack = unique("scale")
    server.cli("up", "-f", str(write_stack(tmp_path, STACK.format(stack=stack, port=PORT))))
    states = {r["name"]: r["state"] for r in json.loads(server.cli("ps", stack, "--json").stdout)}
    assert states == {"web-0": "running", "web-1": "stopped", "lb-0": "running"}  # one warm
    stop = threading.Event()
    sent = [0, 0]  # requests, failures

    def load() -> None:  # ~40 requests a second, 8x the target for one instance
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                try:
                    sent[1] += http.get(f"http://127.0.0.1:{PORT}/").status_code >= 500
                except httpx.HTTPError:
                    sent[1] += 1
                sent[0] += 1
                time.sleep(0.025)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        def scaled() -> bool:
            rows = json.loads(server.cli("autoscale", stack, "--json").stdout)
            return rows[0]["count"] == 3

        try:
            wait_for(scaled, 60, "web to scale out to its max")
        except AssertionError:  # what the autoscaler saw, to say why
            seen = server.cli("autoscale", stack, "--json").stdout
            raise AssertionError(f"not scaled out: {seen}") from None
        [row] = json.loads(server.cli("autoscale", f"{stack}/web", "--json").stdout)
        assert row["target"] == "requests_per_instance 5/s" and row["error"] == ""
        # The metric now is the latest second's, over the instances ready now (maybe under
        # the target already); the one that scaled it out is in the decision's event.
        assert row["metric"] is not None and row["metric"] >= 0
        events = server.cli("events", stack).stdout
        assert re.search(r"autoscale .*requests [\d.]+/s per instance of target 5/s on \d+ "
                         r"ready: \d+ → [23]", events), events
        assert "a warm instance, started" in events
        wait_for(lambda: len([r for r in json.loads(server.cli("ps", stack, "--json").stdout)
                              if r["role"] == "web" and r["health"] == "healthy"]) == 3,
                 60, "three web instances serving")
        # the load goes on through all three for a while: how many were sent is no timing
        wait_for(lambda: sent[0] > 100, 30, "load through the scaled-out role")
    finally:
        stop.set()
        loader.join(10)
    assert sent[0] > 100 and sent[1] == 0, sent
