"""Stack file loading: conversion to StackSpec, and where each problem is reported."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rackfire.errors import SpecError, SpecProblem
from rackfire.model.stack import (
    HealthSpec,
    ImageSource,
    PortMap,
    Resources,
    RuntimeKind,
)
from rackfire.spec import load_stack_file, load_stack_text, stack_json_schema

FIXTURES = Path(__file__).parent / "fixtures" / "spec"
MiB = 1024 * 1024


def problems(text: str) -> list[SpecProblem]:
    with pytest.raises(SpecError) as info:
        load_stack_text(textwrap.dedent(text).lstrip("\n"), "stack.yaml")
    return info.value.problems


def only_problem(text: str) -> SpecProblem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def where(p: SpecProblem) -> tuple[int, int, str]:
    return p.line, p.column, p.field


# -- the example loads -----------------------------------------------------------------------


def test_example_loads_into_stack_spec() -> None:
    spec = load_stack_file(FIXTURES / "hello.yaml")

    assert spec.name == "hello"
    assert [i.name for i in spec.images] == ["base", "debian", "imported"]
    assert spec.image("base").source is ImageSource.HOST
    assert spec.image("debian").packages == ("python3",)
    assert spec.image("imported").path == str(FIXTURES.resolve() / "rootfs.tar.gz")

    web = spec.role("web")
    assert web.count == 3
    assert web.command[:3] == ("python3", "-m", "http.server")
    assert web.resources == Resources(cpu=0.5, memory=128 * MiB, disk=256 * MiB, pids=200)
    assert web.ports == (
        PortMap(8080, 8000),
        PortMap(8443, 8443, "127.0.0.1"),
        PortMap(9000, 9000),
    )
    assert web.env == (("DEBUG", "true"), ("GREETING", "hi"), ("WORKERS", "4"))
    assert web.files == (
        ("/srv/index.html", "hello from {{ instance.name }} at {{ instance.ip }}"),
    )
    assert web.health == HealthSpec(http="http://127.0.0.1:8000/", interval=2.0)
    assert web.runtime is RuntimeKind.CONTAINER

    poller = spec.role("poller")
    assert poller.uses == ("web",)
    assert poller.count == 1
    assert poller.resources == Resources()
    assert poller.runtime is None
    assert poller.health == HealthSpec(tcp=8000, timeout=0.5, retries=5, grace=60.0)


def test_files_paths_are_normalized_and_sorted() -> None:
    spec = load_stack_text(
        "stack: s\nroles:\n  web:\n    image: base\n    command: [sh]\n"
        "    files: {/srv/./b: b, //a: a}\n",
        "stack.yaml",
    )
    assert spec.role("web").files == (("/a", "a"), ("/srv/b", "b"))


def test_merge_keys_and_anchors_are_honoured() -> None:
    spec = load_stack_text(
        textwrap.dedent("""\
            stack: s
            roles:
              web: &web {image: base, command: [sh], count: 2}
              api:
                <<: *web
                count: 5
        """),
        "stack.yaml",
    )
    assert spec.role("api").count == 5
    assert spec.role("api").command == ("sh",)


def test_json_schema_describes_the_file() -> None:
    schema = stack_json_schema()
    assert set(schema["properties"]) == {"stack", "images", "roles", "vip"}
    assert schema["required"] == ["stack"]
    assert "from" in schema["$defs"]["ImageModel"]["properties"]
    assert schema["$defs"]["RoleModel"]["additionalProperties"] is False


# -- each problem points at the right place --------------------------------------------------


def test_typoed_key_suggests_the_allowed_one() -> None:
    p = only_problem("""
        stack: hello
        roles:
          web:
            image: base
            comand: [sh]
    """)
    assert where(p) == (5, 5, "roles.web.comand")
    assert "unknown key 'comand'; allowed: app, backup, command, count, data, egress" in p.message
    assert p.message.endswith("did you mean 'command'?")


def test_wrong_type() -> None:
    p = only_problem("""
        stack: hello
        roles:
          web:
            image: base
            command: [sh]
            count: "three"
    """)
    assert where(p) == (6, 12, "roles.web.count")
    assert p.message == "expected an integer, got 'three'"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3.0", "expected an integer, got 3.0"), ("true", "expected an integer, got true"),
     ("10001", "must be less than or equal to 10000, got 10001")],
)
def test_count_must_be_a_plain_int_in_range(value: str, expected: str) -> None:
    p = only_problem(f"stack: s\nroles:\n  web: {{image: b, command: [sh], count: {value}}}\n")
    assert p.field == "roles.web.count"
    assert p.message == expected


def test_string_where_a_list_is_expected() -> None:
    p = only_problem("stack: s\nroles:\n  web: {image: b, command: python3}\n")
    assert where(p) == (3, 28, "roles.web.command")
    assert p.message == "expected a list, got 'python3'"


def test_unknown_top_level_key() -> None:
    p = only_problem("""
        stack: hello
        role: {}
    """)
    assert where(p) == (2, 1, "role")
    assert "allowed: images, roles, stack, vip; did you mean 'roles'?" in p.message


def test_missing_stack_points_at_the_document() -> None:
    p = only_problem("""
        roles: {}
    """)
    assert where(p) == (1, 1, "stack")
    assert p.message == "missing required key 'stack'"


def test_missing_key_points_at_its_parent_key() -> None:
    p = only_problem("""
        stack: hello
        roles:
          web:
            command: [sh]
    """)
    assert where(p) == (3, 3, "roles.web.image")


def test_bad_indentation_is_invalid_yaml() -> None:
    p = only_problem("""
        stack: hello
        roles:
          web:
            image: base
             command: [sh]
    """)
    assert (p.line, p.column, p.field) == (5, 13, "")
    assert p.message.startswith("invalid YAML: mapping values are not allowed here")


def test_unclosed_bracket_is_invalid_yaml() -> None:
    p = only_problem("""
        stack: hello
        roles: {web: {image: base, command: [sh}}
    """)
    assert (p.line, p.column) == (2, 40)
    assert "expected ',' or ']'" in p.message


def test_bad_size() -> None:
    p = only_problem("""
        stack: hello
        roles:
          web:
            image: base
            command: [sh]
            resources: {memory: 12Q}
    """)
    assert where(p) == (6, 25, "roles.web.resources.memory")
    assert "'12Q' is not a size" in p.message


def test_size_below_minimum() -> None:
    p = only_problem("stack: s\nroles:\n  web: {image: b, command: [sh], resources: {disk: 1M}}\n")
    assert p.field == "roles.web.resources.disk"
    assert p.message == "must be at least 16M, got '1M'"


def test_duplicate_host_port_points_at_the_second() -> None:
    p = only_problem("""
        stack: hello
        roles:
          web: {image: base, command: [sh], ports: ["8080:80"]}
          api: {image: base, command: [sh], ports: [9000, "127.0.0.1:8080:81"]}
    """)
    assert where(p) == (4, 51, "roles.api.ports[1]")
    assert p.message == "host port 8080 is already published by roles.web.ports[0]"


@pytest.mark.parametrize(
    ("port", "message"),
    [('"70000"', "'70000' is not a port number (1 to 65535)"),
     ('"x:80:80"', "'x' in 'x:80:80' is not an IP address"),
     ("[80]", 'expected a port such as 8000 or "8080:8000", got a list')],
)
def test_bad_port(port: str, message: str) -> None:
    p = only_problem(f"stack: s\nroles:\n  web: {{image: b, command: [sh], ports: [{port}]}}\n")
    assert p.field == "roles.web.ports[0]"
    assert p.message == message


def test_uses_a_missing_role() -> None:
    p = only_problem("""
        stack: hello
        roles:
          web: {image: base, command: [sh]}
          poller:
            image: base
            command: [sh]
            uses: [web, db]
    """)
    assert where(p) == (7, 17, "roles.poller.uses[1]")
    assert p.message == "no role named 'db'; roles: web, poller"


def test_bad_jinja_template() -> None:
    p = only_problem("""
        stack: hello
        roles:
          web:
            image: base
            command: [sh]
            files:
              /etc/app.conf: "port={{ instance.port"
    """)
    assert where(p) == (7, 22, 'roles.web.files["/etc/app.conf"]')
    assert p.message.startswith("invalid Jinja2 template: unexpected end of template")


@pytest.mark.parametrize(
    ("path", "message"),
    [("etc/x", "'etc/x' is not an absolute path (e.g. /etc/app.conf)"),
     ("/srv/../etc/x", "'/srv/../etc/x' contains '..'; write the path without it"),
     ("/proc/self/x", "/proc/self/x is under /proc, which the kernel provides at run time"),
     ("/etc//hosts", "/etc/hosts is written by rackfire, so that stack names resolve")],
)
def test_files_path_rules_point_at_the_key(path: str, message: str) -> None:
    p = only_problem(
        f"stack: s\nroles:\n  web:\n    image: b\n    command: [sh]\n    files:\n"
        f"      {path}: x\n"
    )
    assert (p.line, p.column) == (7, 7)
    assert p.message == message


def test_uppercase_name() -> None:
    p = only_problem("""
        stack: hello
        roles:
          Web: {image: base, command: [sh]}
    """)
    assert where(p) == (3, 3, "roles.Web")
    assert p.message.startswith("'Web' is not a valid name: use 1 to 32 lowercase letters")


def test_bad_env_name_points_at_the_key() -> None:
    p = only_problem("stack: s\nroles:\n  web: {image: b, command: [sh], env: {1X: a}}\n")
    assert where(p) == (3, 40, "roles.web.env.1X")


def test_health_needs_exactly_one_probe() -> None:
    p = only_problem("""
        stack: s
        roles:
          web:
            image: base
            command: [sh]
            health:
              interval: 2s
    """)
    assert where(p) == (6, 5, "roles.web.health")
    assert p.message == "set exactly one of http, tcp or exec"


def test_tarball_image_needs_a_path() -> None:
    p = only_problem("stack: s\nimages:\n  img: {from: tarball}\n")
    assert where(p) == (3, 3, "images.img")
    assert "from: tarball needs a path" in p.message


def test_duplicate_key() -> None:
    p = only_problem("""
        stack: hello
        roles:
          web: {image: base, command: [sh]}
          web: {image: other, command: [sh]}
    """)
    assert where(p) == (4, 3, "roles.web")
    assert p.message == "duplicate key 'web' (first at line 3, column 3)"


def test_several_problems_are_reported_at_once_in_file_order() -> None:
    found = problems("""
        stack: Hello
        roles:
          web:
            image: base
            comand: [sh]
            count: "three"
            resources: {memory: 12Q}
            files:
              /x: "{% if %}"
    """)
    assert [(p.line, p.field) for p in found] == [
        (1, "stack"),
        (5, "roles.web.comand"),
        (6, "roles.web.count"),
        (7, "roles.web.resources.memory"),
        (9, 'roles.web.files["/x"]'),
    ]


# -- the whole file --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n", "  \n"])
def test_empty_file(text: str) -> None:
    p = only_problem(text)
    assert (p.line, p.column) == (1, 1)
    assert p.message.startswith("the file is empty")


def test_top_level_must_be_a_mapping() -> None:
    p = only_problem("- stack: hello\n")
    assert (p.line, p.column) == (1, 1)
    assert p.message.endswith("at the top level, got a list")


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_stack_file(tmp_path / "missing.yaml")
    [p] = info.value.problems
    assert (p.line, p.column, p.message) == (0, 0, "file not found")


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_bytes(b"stack: s\nroles: \xff\n")
    with pytest.raises(SpecError) as info:
        load_stack_file(path)
    assert where(info.value.problems[0]) == (2, 8, "")


@pytest.mark.parametrize(
    "text",
    [
        "stack: !!python/object/apply:os.system [echo]\n",  # unsafe tags are refused
        "stack: &a [*a]\n",  # an alias inside itself
        "stack: " + "[" * 200 + "]" * 200 + "\n",
        "stack: " + "[" * 1000 + "]" * 1000 + "\n",  # deeper than PyYAML can recurse
        "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"  # a billion laughs
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)),
        "stack: s\nroles: {web: {image: b, command: [sh], resources: {memory: 9e999P}}}\n",
        "stack: s\nroles: {web: {image: b, command: [sh], health: {tcp: 1, grace: nan}}}\n",
    ],
)
def test_hostile_input_gives_spec_error_only(text: str) -> None:
    assert problems(text)


def test_a_file_inside_another_file_is_refused() -> None:
    text = """\
stack: s
roles:
  web:
    image: base
    command: ["true"]
    files:
      /etc/app: "a"
      /etc/app/x.conf: "b"
      /etc/hostname/y: "c"
"""
    with pytest.raises(SpecError) as e:
        load_stack_text(text, "s.yaml")
    fields = {(p.field, p.line) for p in e.value.problems}
    assert any("/etc/app/x.conf" in f and line == 8 for f, line in fields), fields
    assert any("/etc/hostname/y" in f for f, _ in fields), fields


# -- releases, rollouts, reloads and data disks ------------------------------------------------


def test_shop_example_loads_with_releases_reload_and_data() -> None:
    spec = load_stack_file(Path(__file__).parents[2] / "examples" / "shop" / "stack.yaml")
    app, db, lb = spec.role("app"), spec.role("db"), spec.role("lb")
    assert app.app is not None and app.app.path.endswith("examples/shop/app")
    assert app.app.digest == ""  # the CLI uploads it and fills this in
    assert app.update.max_surge == 1 and db.update.max_surge == 0
    assert db.data is not None and db.data.path == "/data" and db.data.size == 512 << 20
    assert lb.reload is not None and lb.reload.signal == "USR2"
    assert app.uses == ("db", "mem") and lb.uses == ("app",)


@pytest.mark.parametrize(("snippet", "field", "message"), [
    ("update: {max_unavailable: 0, max_surge: 0}", "roles.web.update",
     "cannot both be 0"),
    ("update: {health_timeout: 0s}", "roles.web.update.health_timeout", "longer than 0"),
    ("reload: {}", "roles.web.reload", "exactly one of signal or exec"),
    ("reload: {signal: KILL}", "roles.web.reload.signal", "not a signal rackfire sends"),
    ("data: {path: /, size: 1G}", "roles.web.data.path", "part of the image"),
    ("data: {path: data, size: 1G}", "roles.web.data.path", "not an absolute path"),
    ("data: {path: /data, size: 1M}", "roles.web.data.size", "at least 16M"),
    ("files: {/etc/resolv.conf: x}", 'roles.web.files["/etc/resolv.conf"]',
     "written by rackfire"),
    ("data: {path: /proc/x, size: 1G}", "roles.web.data.path", "the kernel's"),
])
def test_release_fields_are_checked(snippet: str, field: str, message: str) -> None:
    p = only_problem(f"""
        stack: s
        roles:
          web:
            image: base
            command: [sh]
            {snippet}
    """)
    assert p.field == field and message in p.message, p


def test_release_images_are_not_declared() -> None:
    p = only_problem("""
        stack: s
        images: {mine: {from: release}}
        roles: {}
    """)
    assert p.field == "images.mine" and "rackfire push" in p.message, p


# -- hostile input: templates, cycles, size ---------------------------------------------------


@pytest.mark.parametrize(("template", "message"), [
    ("{% include 'x' %}", "invalid Jinja2 template: {% include %} is not allowed"),
    ("a\\n{% import 'x' as y %}",
     "invalid Jinja2 template (template line 2): {% import %} is not allowed"),
    ("{% extends 'x' %}", "invalid Jinja2 template: {% extends %} is not allowed"),
    ("{{ 10 ** 5000 }}", "template failed: too much: 10 ** 5000 has more than 4096 bits"),
    ("{{ range(10**9)|length }}", "template failed: OverflowError: Range too big"),
    ("a\\n{{ 1 / 0 }}", "template failed: ZeroDivisionError: division by zero (template line 2)"),
    ("{{ instance.port }}", "template failed: 'dict object' has no attribute 'port'"),
    ("{{ 'x' * 300000000 }}", "template failed: too much: `*` would make about 300,000,000"),
])
def test_template_that_cannot_render_is_refused_at_its_line(template: str, message: str) -> None:
    p = only_problem(f"""
        stack: hello
        roles:
          web:
            image: base
            command: [sh]
            files:
              /etc/app.conf: "{template}"
    """)
    assert where(p) == (7, 22, 'roles.web.files["/etc/app.conf"]')
    assert p.message.startswith(message), p.message


def test_rendered_files_are_bounded_by_the_instances_disk() -> None:
    found = problems("""
        stack: hello
        roles:
          web:
            image: base
            command: [sh]
            resources: {disk: 64M}
            files:
              /etc/huge: "{% for i in range(3) %}{{ 'x' * 500000 }}{% endfor %}"
          api:
            image: base
            command: [sh]
            resources: {disk: 16M}
            files:
              /etc/a: "{{ 'x' * 1000000 }}"
              /etc/b: "{{ 'x' * 1000000 }}"
              /etc/c: "{{ 'x' * 1000000 }}"
              /etc/d: "{{ 'x' * 1000000 }}"
              /etc/e: "{{ 'x' * 1000000 }}"
    """)
    assert [(p.line, p.field, p.message) for p in found] == [
        (8, 'roles.web.files["/etc/huge"]',
         "template failed: renders to more than 1M, the limit for one file"),
        (18, 'roles.api.files["/etc/e"]',
         "template failed: the instance's files would take more than 4M (a quarter of its "
         "disk, at most 16M)"),
    ]


def test_templates_see_what_the_renderer_gives_them() -> None:
    spec = load_stack_text(textwrap.dedent("""
        stack: hello
        roles:
          db: {image: base, command: [sh], count: 2}
          web:
            image: base
            command: [sh]
            uses: [db]
            env: {MODE: x}
            files:
              /etc/a: "{{ roles.db.ready[0].ip }} {{ roles.db.count }} {{ env.MODE }}
                {{ instance.id }} {{ role.count }} {{ stack.name }}"
    """), "stack.yaml")
    assert spec.role("web").uses == ("db",)


OWN_READY = ("lists db's own ready instances{}, but db cannot reload: every restart would "
             "change its peers' files and restart them in turn; give db a `reload:` (a signal "
             "or an exec), or list roles.db.instances (all of them, ready or not)")


def test_a_role_that_cannot_reload_may_not_list_its_own_ready_instances() -> None:
    # Each would restart for ever: becoming ready changes the files, the restart that
    # follows takes it out of the ready set, which changes them back (see
    # test_controller_properties: test_own_ready_peers_without_reload_are_refused).
    found = problems("""
        stack: s
        roles:
          db:
            image: base
            command: [sh]
            count: 3
            health: {tcp: 5432}
            files:
              /etc/peers: "{% for i in roles.db.ready %}{{ i.ip }}\\n{% endfor %}"
              /etc/count: "{{ roles.db.instances|length }} {{ roles.db.count }}"
              /etc/me: |
                # whether I am one of the ready, in a branch not taken
                {% if instance.index > 99 %}
                {{ instance in roles[role.name].ready }}
                {% endif %}
              /etc/alias: |
                {% set me = roles[role.name] %}{{ me.ready|length }}
    """)
    assert [(*where(p), p.message) for p in found] == [
        (9, 19, 'roles.db.files["/etc/peers"]', OWN_READY.format("")),
        (11, 16, 'roles.db.files["/etc/me"]', OWN_READY.format(" (template line 3)")),
        (16, 19, 'roles.db.files["/etc/alias"]', OWN_READY.format("")),
    ]


@pytest.mark.parametrize("snippet", [
    "reload: {signal: HUP}",  # the planner reloads it in place: it stays ready
    "reload: {exec: [sv, reload, db]}",
    "restart: {attempts: 3}",  # no check: ready as it runs, again by the next look
])
def test_own_ready_instances_are_listed_by_a_role_that_reloads_or_has_no_check(
        snippet: str) -> None:
    health = "" if snippet.startswith("restart") else "health: {tcp: 5432}"
    spec = load_stack_text(textwrap.dedent(f"""
        stack: s
        roles:
          db:
            image: base
            command: [sh]
            count: 3
            {health}
            {snippet}
            files:
              /etc/peers: "{{% for i in roles.db.ready %}}{{{{ i.ip }}}}{{% endfor %}}"
          web:
            image: base
            command: [sh]
            uses: [db]
            health: {{tcp: 80}}
            files:
              /etc/db: "{{% for i in roles.db.ready %}}{{{{ i.ip }}}}{{% endfor %}}"
    """), "stack.yaml")
    assert spec.role("db").files and spec.role("web").files


@pytest.mark.parametrize(("uses", "expected"), [
    ({"a": ["b"], "b": ["c"], "c": ["a"]},
     [(14, "roles.c.uses[0]", "roles use each other in a cycle: a -> b -> c -> a")]),
    ({"a": ["b"], "b": ["a"], "c": ["a"]},
     [(10, "roles.b.uses[0]", "roles use each other in a cycle: a -> b -> a")]),
    ({"a": ["b", "c"], "b": ["c"], "c": []}, []),
])
def test_roles_that_use_each_other_in_a_cycle_are_refused(
        uses: dict[str, list[str]], expected: list[tuple[int, str, str]]) -> None:
    text = "stack: s\nroles:\n" + "".join(
        f"  {name}:\n    image: base\n    command: [sh]\n    uses: [{', '.join(used)}]\n"
        for name, used in uses.items())
    if not expected:
        assert load_stack_text(text, "stack.yaml").role("a").uses == ("b", "c")
        return
    with pytest.raises(SpecError) as info:
        load_stack_text(text, "stack.yaml")
    assert [(p.line, p.field, p.message) for p in info.value.problems] == expected


def test_a_stack_file_over_one_mib_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = "stack: s\n" + "# padding\n" * 120_000  # 1.2 MB of comments: valid YAML
    with pytest.raises(SpecError) as info:
        load_stack_text(big, "big.yaml")
    [p] = info.value.problems
    assert p.render() == ("big.yaml:1:1: the stack file is larger than 1MiB, the limit for "
                          "one stack file")
    f = tmp_path / "big.yaml"
    f.write_text("stack: s\n" + "# padding\n" * 5_000_000)  # 50 MB
    with pytest.raises(SpecError) as info:
        load_stack_file(f)
    assert "larger than 1MiB" in info.value.problems[0].message
    # Just under the limit is a stack file like any other.
    assert load_stack_text("stack: s\n" + "#\n" * 500_000, "ok.yaml").name == "s"


def test_loading_holds_the_stacks_budget_of_template_steps() -> None:
    # Each file takes ~800,000 steps (under one file's million); thirty of them are more
    # than a stack's 20 million: loading refuses the files past where the budget runs out.
    loop = ('{% set s = "x" * 1000000 %}{% for i in range(800) %}{% if s == "" %}{% endif %}'
            '{% endfor %}')
    def stack(n: int) -> str:
        return "stack: s\nroles:\n" + "".join(
            f"  r{i}:\n    image: base\n    command: [sh]\n    files:\n"
            f"      /etc/x: '{loop}'\n" for i in range(n))
    assert len(load_stack_text(stack(2), "stack.yaml").roles) == 2
    found = problems(stack(30))
    assert [p.field for p in found] == [f'roles.r{i}.files["/etc/x"]' for i in range(25, 30)]
    assert all("the stack's templates take more than 20,000,000 loop steps" in p.message
               for p in found), found


def test_a_vip_is_one_unicast_ipv4_address() -> None:
    base = """\
        stack: s
        vip: {vip}
        images: {{base: {{from: host}}}}
        roles: {{web: {{image: base, command: [sleep, "1"], resources: {{memory: 32M}}}}}}
        """
    spec = load_stack_text(textwrap.dedent(base.format(vip="192.168.10.50")), "stack.yaml")
    assert spec.vip == "192.168.10.50"
    assert load_stack_text(textwrap.dedent(base.format(vip="null")), "stack.yaml").vip == ""
    for bad, says in (("10.0.0", "not an IPv4 address"), ("fe80::1", "not an IPv4 address"),
                      ("224.0.0.5", "cannot float"), ("127.0.0.9", "cannot float"),
                      ("0.0.0.0", "cannot float")):
        p = only_problem(base.format(vip=bad))
        assert (p.line, p.field) == (2, "vip") and says in p.message, p
