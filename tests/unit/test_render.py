"""The renderer against hostile templates: every failure is a refusal that names the file,
never another exception (the API's 500), and nothing it makes is unbounded."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from rackfire.errors import PrereqError
from rackfire.model.instance import InstanceKey, NetworkConfig
from rackfire.model.stack import Resources, RoleSpec, RuntimeKind, StackSpec
from rackfire.plan import render_stack

NET = NetworkConfig("s", "10.1.0.0/24", "10.1.0.1", 24)
MiB = 1 << 20


def render(files: dict[str, str], *, disk: int = 256 * MiB, count: int = 2) -> list[str]:
    """What the renderer makes of `files` for a stack of one role (the stack file's checks
    are not in the way: a spec written by `scale` or stored before a limit existed is
    rendered without them)."""
    role = RoleSpec("web", "base", count=count, command=("sh",),
                    resources=Resources(disk=disk), files=tuple(sorted(files.items())))
    stack = StackSpec("s", (), (role,))
    ips = {InstanceKey("s", "web", i): f"10.1.0.{i + 2}" for i in range(count)}
    requests = render_stack(stack, ips, {"base": "0" * 64}, NET, RuntimeKind.CONTAINER)
    return [text for r in requests for _, text in r.files]


HOSTILE = {
    "include": ("{% include '/etc/shadow' %}", "{% include %} is not allowed"),
    "import": ("{% import 'x.j2' as x %}", "{% import %} is not allowed"),
    "from_import": ("{% from 'x.j2' import y %}", "{% import %} is not allowed"),
    "extends": ("{% extends 'base.j2' %}", "{% extends %} is not allowed"),
    "power": ("{{ 10 ** 5000 }}", "more than 4096 bits"),
    "float_power": ("{{ 10.0 ** 1000 }}", "OverflowError"),
    "repeat": ("{{ 'x' * 300000000 }}", "the limit is 1,048,576"),
    "range": ("{% for i in range(10**9) %}{% endfor %}", "Range too big"),
    "nested_loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                     "{% endfor %}", "more than 1,000,000 loop steps"),
    "doubling": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}"
                 "{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "the limit is 1,048,576"),
    "padding": ("{{ 'x'|center(1000000000) }}", "center would make"),
    "format_width": ("{{ '%999999999d' % 1 }}", "formatting would make"),
    "join": ("{{ range(10000)|join('x' * 1000000) }}", "join would make"),
    "zero_division": ("{{ 1 / 0 }}", "ZeroDivisionError"),
    "recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "nested too deeply"),
    "lipsum": ("{{ lipsum(1000000) }}", "'lipsum' is undefined"),
    # Not hostile but never the same twice: the file would be reconfigured at every plan.
    "random": ("{{ range(100)|random }}", "No filter named 'random'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_template_is_a_refusal_naming_the_file(case: str) -> None:
    template, words = HOSTILE[case]
    t0 = time.monotonic()
    with pytest.raises(PrereqError) as info:
        render({"/etc/app.conf": template})
    assert info.value.message.startswith("roles.web.files./etc/app.conf: template failed: ")
    assert words in info.value.message, info.value.message
    assert time.monotonic() - t0 < 10


def test_output_stops_at_one_mib_per_file_without_holding_more() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(PrereqError) as info:
            render({"/etc/big": "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "renders to more than 1M, the limit for one file" in info.value.message
    assert peak < 8 * MiB, peak  # it stopped at the bound; 10 GB were asked for


def test_an_instances_files_stay_within_a_quarter_of_its_disk() -> None:
    # Each file is under 1 MiB; five of them are more than 4 MiB, a quarter of 16M.
    files = {f"/etc/f{i}": "{{ 'x' * 1000000 }}" for i in range(5)}
    with pytest.raises(PrereqError) as info:
        render(files, disk=16 * MiB)
    assert info.value.message.startswith("roles.web.files./etc/f4: template failed: ")
    assert "the instance's files would take more than 4M" in info.value.message
    # With a bigger disk they fit: 5 MB of files, 16 MiB at most for any disk.
    assert [len(t) for t in render(files, disk=1 << 30)] == [1000000] * 10


def test_ordinary_templates_render_as_before() -> None:
    [a, b] = render({"/etc/peers": "{{ instance.name }}:"
                     "{{ roles.web.instances|map(attribute='ip')|join(',') }};"
                     "{{ roles.web.instances|join(' ', attribute='name') }};"
                     "{{ '%05d'|format(42) }} {{ 'ab' * 2 }} {{ 2 ** 10 }} {{ 'a' ~ 1 }}"
                     "{% for w in roles.web.instances %} {{ loop.index }}{% endfor %}"})
    assert a == "web-0:10.1.0.2,10.1.0.3;web-0 web-1;00042 abab 1024 a1 1 2"
    assert b.startswith("web-1:")
    # Loops keep what `loop` knows; macros, call blocks and recursive loops work.
    [c, _] = render({"/etc/x": "{% for w in roles.web.instances %}{{ loop.index }}/"
                     "{{ loop.length }}{{ ',' if not loop.last }}{% else %}none{% endfor %};"
                     "{% macro m(x) %}<{{ x }}{{ caller() }}>{% endmacro %}"
                     "{% call m(1) %}c{% endcall %};"
                     "{% for t in [[1, [2]], [3]] recursive %}"
                     "{% if t is iterable %}{{ loop(t) }}{% else %}{{ t }}{% endif %}"
                     "{% endfor %}"})
    assert c == "1/2,2/2;<1c>;123"


def test_a_stacks_templates_share_one_budget_of_steps() -> None:
    # 900,000 steps per instance is within one file's million; 25 instances of it are not
    # within the stack's 20 million: refused in seconds, not after minutes of CPU.
    loops = "{% for i in range(100000) %}{% endfor %}" * 9
    assert len(render({"/etc/x": "{{ instance.name }}" + loops}, count=2)) == 2
    t0 = time.process_time()
    with pytest.raises(PrereqError) as info:
        render({"/etc/x": "{{ instance.name }}" + loops}, count=25)
    assert "the stack's templates take more than 20,000,000 loop steps" in info.value.message
    assert time.process_time() - t0 < 30


BIG = '{% set s = "x" * 1000000 %}'
COPIES = {  # each turn copies or scans a 1 MB string: a loop of 100,000 took minutes
    "concat": '{% if s ~ "y" %}{% endif %}',
    "plus": '{% if s + "y" %}{% endif %}',
    "method": "{% if s.upper() %}{% endif %}",
    "filter": "{% if s|replace('x', 'y') %}{% endif %}",
    "compare": '{% if s == "y" ~ s[1:] %}{% endif %}',
    "in": "{% if 'y' in s %}{% endif %}",
    "slice": "{% if s[1:] %}{% endif %}",
    "python_filter": "{% if s|wordwrap %}{% endif %}",
}


@pytest.mark.parametrize("case", sorted(COPIES))
def test_work_on_big_values_costs_its_size(case: str) -> None:
    t0 = time.process_time()
    with pytest.raises(PrereqError) as info:
        render({"/etc/x": BIG + "{% for i in range(100000) %}" + COPIES[case]
                + "{% endfor %}"})
    assert "more than 1,000,000 loop steps and calls" in info.value.message
    assert time.process_time() - t0 < 5  # it stopped after a few thousand turns


def test_a_big_role_listing_its_peers_fits_the_budget() -> None:
    # What a config of a role of 300 does: every peer, and whether it is one of the ready.
    out = render({"/etc/peers": "{% for p in roles.web.instances %}{{ p.ip }}"
                  "{{ ' ready' if p in roles.web.ready }}\n{% endfor %}"
                  "{{ instance in roles.web.instances }}"}, count=300)
    assert len(out) == 300 and out[0].startswith("10.1.0.2\n")


@pytest.mark.parametrize("body", [
    "{% macro m() %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endmacro %}{{ m()|length }}",
    "{% set x %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}{{ x|length }}",
    "{% filter length %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endfilter %}",
])
def test_what_macros_and_blocks_hold_is_bounded(body: str) -> None:
    # Their output is kept until they end, then joined: 100 GB, unless counted as it goes.
    tracemalloc.start()
    try:
        with pytest.raises(PrereqError) as info:
            render({"/etc/x": BIG + body})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "macros and blocks make more than 16,777,216 characters" in info.value.message
    assert peak < 64 * MiB, peak


def test_a_role_of_hundreds_comparing_its_peers_fits_the_budget() -> None:
    # Every instance lists every peer and whether it is ready: 300 x 300 comparisons with
    # the ready list, each of which reads it.
    n = 300
    role = RoleSpec("web", "base", count=n, command=("sh",), files=(
        ("/etc/peers", "{{ instance.name }}{% for p in roles.web.instances %}"
         "{{ p.ip ~ (' up' if p in roles.web.ready else '') }}\n{% endfor %}"),))
    keys = [InstanceKey("s", "web", i) for i in range(n)]
    ips = {k: f"10.1.{k.index // 250}.{k.index % 250 + 2}" for k in keys}
    requests = render_stack(StackSpec("s", (), (role,)), ips, {"base": "0" * 64}, NET,
                            RuntimeKind.CONTAINER, ready=keys[1:])
    [peers] = [text for _, text in requests[0].files]
    assert peers.splitlines()[:2] == ["web-010.1.0.2", "10.1.0.3 up"]
