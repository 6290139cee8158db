"""Golden cases for the pure planner: a stack file that is running (`before`, with some
instances in given states), the file wanted now (`after`), and the exact plan expected.

Each case is one YAML file under golden/planner/. To see a failing case's actual plan, the
assertion prints it in the same shape as `expected`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from rackfire.model.instance import InstanceFacts, InstanceKey, InstanceState, NetworkConfig
from rackfire.model.stack import RuntimeKind
from rackfire.plan import Control, plan_stack, render_stack
from rackfire.spec import load_stack_text

GOLDEN = Path(__file__).parent / "golden" / "planner"
NET = NetworkConfig("s", "10.1.0.0/24", "10.1.0.1", 24)
NOW = 1000.0


def _ips(spec: Any) -> dict[InstanceKey, str]:
    # Stable per key, as the store keeps them: role order, then index.
    ips = {}
    n = 2
    for role_i, role in enumerate(spec.roles):
        for i in range(50):
            ips[InstanceKey(spec.name, role.name, i)] = f"10.1.{role_i}.{n + i}"
    return ips


def _render(text: str, digests: dict[str, str]) -> tuple[list[Any], Any]:
    spec = load_stack_text(text, "case.yaml")
    return render_stack(spec, _ips(spec), digests, NET, RuntimeKind.CONTAINER), spec


def _facts(case: dict[str, Any]) -> list[InstanceFacts]:
    if not case.get("before"):
        return []
    reqs, _ = _render(case["before"], case.get("before_images", {"base": "a" * 64}))
    states = case.get("states", {})
    facts = []
    for r in reqs:
        short = f"{r.key.role}/{r.key.index}"
        state = states.get(short, "missing" if r.surge else "running")
        if state == "missing":
            continue
        facts.append(InstanceFacts(
            key=r.key, state=InstanceState(state.split(":")[0]), runtime=r.runtime, host="h",
            ip=r.ip, spec_hash=r.spec_hash, spec_fields=r.spec_fields,
            config_hash=r.config_hash, files_layout=r.files_layout,
            oom_killed=state.endswith(":oom"),
            resources=r.resources,
            started_at=case.get("started", {}).get(short, case.get("started_at", 900.0))))
    return facts


def _key(short: str) -> InstanceKey:
    role, index = short.split("/")
    return InstanceKey("s", role, int(index))


def _cases() -> list[Path]:
    return sorted(GOLDEN.glob("*.yaml"))


@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    after = case.get("after")
    if after:
        desired, spec = _render(after, case.get("after_images", {"base": "a" * 64}))
    else:
        desired, spec = [], None
    controls = {_key(k): Control(**{**v, "failures": tuple(v.get("failures", ()))})
                for k, v in case.get("controls", {}).items()}
    facts = _facts(case)
    new = {r.key: r for r in desired}
    facts = [  # instances the rollout already replaced run the new spec
        replace(f, spec_hash=new[f.key].spec_hash, spec_fields=new[f.key].spec_fields)
        if f"{f.key.role}/{f.key.index}" in case.get("new_spec", ()) else f
        for f in facts
    ]
    unhealthy = {_key(k): why for k, why in case.get("unhealthy", {}).items()}
    starting = [_key(k) for k in case.get("starting", ())]
    plan = plan_stack("s", 1, spec, desired, facts, controls, NOW, unhealthy, starting)
    actual = [
        [a.kind.value, f"{a.key.role}/{a.key.index}", a.reason]
        + ([a.not_before] if a.not_before is not None else [])
        + ([f"held: {a.held}"] if a.held else [])
        + ([f"batch {a.batch}"] if a.batch != 1 else [])
        for a in plan.actions
    ]
    assert actual == case["expected"], yaml.safe_dump({"expected": actual})


def test_there_are_golden_cases() -> None:
    assert len(_cases()) >= 23


def test_files_that_read_their_instance_differ_and_the_rest_are_alike() -> None:
    reqs, _ = _render("""\
stack: s
roles:
  web:
    image: base
    command: [sh]
    count: 3
  lb:
    image: base
    command: [sh]
    count: 2
    uses: [web]
    files:
      /etc/me: "{{ instance.name }} {% for w in roles.web.instances %}{{ w.ip }} {% endfor %}"
      /etc/all: "{% for w in roles.web.instances %}{{ w.name }} {% endfor %}"
""", {"base": "a" * 64})
    lb = [dict(r.files) for r in reqs if r.key.role == "lb"]
    assert lb[0]["/etc/me"] == "lb-0 10.1.0.2 10.1.0.3 10.1.0.4 "
    assert lb[1]["/etc/me"] == "lb-1 10.1.0.2 10.1.0.3 10.1.0.4 "
    assert lb[0]["/etc/all"] == lb[1]["/etc/all"] == "web-0 web-1 web-2 "
    hashes = [r.config_hash for r in reqs if r.key.role == "lb"]
    assert hashes[0] != hashes[1]
