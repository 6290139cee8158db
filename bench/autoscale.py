"""Autoscaling reaction on the shop: a spike from the client appliance (`rackfire load`)
against the shop's lb, the app role scaling on requests per instance; from the load's start
to a new app instance serving, cold (created), warm (started) and with decisions every
15 s as the Kubernetes HPA makes them; back to min after the load ends and the cooldown
passes; and the failed requests of the load, which must be none."""

from __future__ import annotations

import ipaddress
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.deploy import Server, cleanup, shop_copy
from bench.report import Result, Target
from bench.rfserver import free_port

POOL = "10.93.0.0/16"
MIN, MAX = 2, 6
TARGET = 25  # requests per second per app instance
RATE, CLIENTS, DURATION = 150, 4, 30  # 150/s: six instances' worth, three times min's
COOLDOWN = 20
MODES = (("cold", 2.0, 0), ("warm", 2.0, 2), ("hpa-15s", 15.0, 0))


def scaled_shop(work: Path, stack: str, port: int, warm: int) -> Path:
    dst = shop_copy(work, stack, port)
    text = (dst / "stack.yaml").read_text()
    old = "  app:\n    image: appliance\n    count: 2\n"
    if old not in text:
        raise RuntimeError("examples/shop/stack.yaml changed shape: cannot scale its app")
    text = text.replace(old, (
        "  app:\n    image: appliance\n"
        f"    scale: {{min: {MIN}, max: {MAX}, warm: {warm}, cooldown: {COOLDOWN}s, "
        f"target: {{requests_per_instance: {TARGET}/s}}}}\n"))
    (dst / "stack.yaml").write_text(text)
    return dst / "stack.yaml"


class Api:
    def __init__(self, srv: Server) -> None:
        token = (srv.data_dir / "token").read_text().strip()
        self.http = httpx.Client(base_url=srv.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()


def serving(api: Api, stack: str) -> int:
    return sum(1 for r in api.get("/v1/instances") if r["stack"] == stack
               and r["role"] == "app" and r["state"] == "running" and r["health"] == "healthy")


def one_spike(srv: Server, api: Api, stack: str, target: str) -> dict[str, float]:
    r = api.http.post("/v1/loadtests", json={"stack": stack, "target": target,
                                              "clients": CLIENTS, "rate": RATE,
                                              "duration": DURATION})
    r.raise_for_status()
    test = r.json()
    start, first, most = test["start_at"], None, MIN
    end = start + DURATION
    while True:
        now = time.time()
        n = serving(api, stack)
        most = max(most, n)
        if first is None and now >= start and n > MIN:
            first = now - start
        test = api.get(f"/v1/loadtests/{test['id']}")
        if test["state"] != "running" and now > end:
            break
        time.sleep(0.2)
    if test["state"] != "done" or test["report"] is None:
        raise RuntimeError(f"the load test did not finish: {test['message']}")
    report = test["report"]
    back = None
    deadline = time.time() + COOLDOWN + 120
    while time.time() < deadline:
        [app] = api.get(f"/v1/autoscale/{stack}?role=app")
        if app["count"] == MIN and serving(api, stack) == MIN:
            back = time.time() - end
            break
        time.sleep(0.5)
    failed = report["sent"] - report["ok"]
    return {"serving": first if first is not None else float("nan"),
            "back": back if back is not None else float("nan"), "failed": failed,
            "sent": report["sent"], "most": most, "p99": report["p99_ms"]}


def run_mode(name: str, every: float, warm: int, runs: int) -> list[dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix=f"rf-bench-autoscale-{name}-"))
    stack, port = f"as{uuid.uuid4().hex[:6]}", free_port()
    srv = Server(work / "data", POOL)
    os.environ["RACKFIRE_AUTOSCALE_EVERY"] = str(every)  # the server's decision interval
    try:
        srv.start()
    finally:
        os.environ.pop("RACKFIRE_AUTOSCALE_EVERY", None)
    applied, out = False, []
    try:
        up = srv.cli("apply", "-f", str(scaled_shop(work, stack, port, warm)), "-y",
                     timeout=1800)
        applied = True
        if up.returncode != 0:
            raise RuntimeError(f"apply failed: {up.stderr[-1500:]}")
        api = Api(srv)
        subnet = api.get(f"/v1/stacks/{stack}")["subnet"]
        gateway = str(next(ipaddress.ip_network(subnet).hosts()))  # the host, to clients
        for i in range(runs):
            got = one_spike(srv, api, stack, f"http://{gateway}:{port}/")
            print(f"   {name} run {i + 1}: {got}", flush=True)
            out.append(got)
    finally:
        problems = cleanup(srv, stack, work, applied)
        if problems:
            raise RuntimeError(f"left behind: {problems}")
    return out


def run(runs: int) -> Result:
    res = Result("autoscale", "Autoscaling the shop under a spike", (
        f"The shop with its app role scaled on requests per instance (min {MIN}, max {MAX}, "
        f"target {TARGET}/s, cooldown {COOLDOWN}s), the lb's HAProxy stats read from inside "
        f"it. A spike from the client appliance: {CLIENTS} clients, {RATE} req/s open-model "
        f"for {DURATION} s (six instances' worth). *serving*: from the clients' start barrier "
        "to a third app instance running and healthy (polled every 0.2 s); *back to min*: "
        "from the load's end to the app at min again. Modes: cold (instances created), warm "
        "(2 warm instances, started), and decisions every 15 s as the Kubernetes HPA makes "
        "them (RACKFIRE_AUTOSCALE_EVERY=15, cold). The load's failed requests (sent - 1xx-3xx) "
        "through the lb must be 0."))
    results = {name: run_mode(name, every, warm, runs) for name, every, warm in MODES}
    for name, rows in results.items():
        res.add("spike to a new instance serving", name, [r["serving"] for r in rows], "s")
        res.add("load end to back at min", name, [r["back"] for r in rows], "s",
                part=True)
        res.add("failed requests of the load", name, [r["failed"] for r in rows], "requests",
                part=True)
    cold, warm = results["cold"], results["warm"]
    worst = max(r["serving"] for r in cold)
    res.targets.append(Target("cold: spike to new app instances serving <= 10 s",
                              worst <= 10, f"{worst:.2f} s max"))
    worst = max(r["serving"] for r in warm)
    res.targets.append(Target("warm: spike to new app instances serving <= 3 s",
                              worst <= 3, f"{worst:.2f} s max"))
    # The target is rackfire's own (cold and warm); the HPA's interval is the comparison:
    # what the load loses while 15 s pass before a decision.
    ours = [r for name in ("cold", "warm") for r in results[name]]
    failed, sent = sum(r["failed"] for r in ours), sum(r["sent"] for r in ours)
    res.targets.append(Target("cold and warm: 0 failed requests through the lb", failed == 0,
                              f"{failed:g} of {sent:g}"))
    hpa = results["hpa-15s"]
    res.notes.append(f"At the HPA's 15 s the load lost {sum(r['failed'] for r in hpa):g} of "
                     f"{sum(r['sent'] for r in hpa):g} requests (the two instances of min "
                     "are overloaded until a decision comes); its p99 latency per run: "
                     + ", ".join(f"{r['p99']:.0f} ms" for r in hpa) + ".")
    back = all(r["back"] == r["back"] for rows in results.values() for r in rows)
    res.targets.append(Target("back to min after the load and the cooldown", back,
                              "every run" if back else "not every run"))
    return res
