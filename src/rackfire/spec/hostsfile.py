"""Load a hosts file: YAML -> pydantic validation -> cross-checks -> HostsFile.

```yaml
controller: http://10.0.0.1:7480       # where the hosts reach this server (for an install)
known_hosts: ~/.ssh/known_hosts        # optional: where host keys are checked by default
hosts:
  - {name: h1, address: 10.0.0.11, user: root, key: ~/.ssh/id_ed25519, labels: {rack: r1}}
  - {name: h2, address: h2.example.net, port: 2222, host_key: "SHA256:..."}
```

As with a stack file, the only exception that leaves is a SpecError carrying every problem
with its file, line and field: a host listed twice (by name or by address and port) is
pointed at where it is listed again.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from rackfire.errors import SpecProblem
from rackfire.model.hostsfile import (
    DEFAULT_KNOWN_HOSTS,
    FINGERPRINT,
    HOST_NAME,
    LABEL_KEY,
    LABEL_VALUE,
    UNIX_USER,
    DeclaredHost,
    HostsFile,
    SshTarget,
)
from rackfire.spec.loader import read_spec_file
from rackfire.spec.schema import Port, describe
from rackfire.spec.validation import validated
from rackfire.spec.yamltree import Document

MAX_HOSTS_FILE = 1024 * 1024
MAX_HOSTS = 10_000
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _matching(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{describe(value)} is not {what}")
        return value
    return AfterValidator(check)


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        if _DNS_NAME.match(value):
            return value
    raise ValueError(f"{describe(value)} is not an IP address or a DNS name")


def _path(value: str) -> str:
    if not value or "\0" in value or len(value) > 4096:
        raise ValueError("expected a file path")
    return value


HostName = Annotated[str, _matching(HOST_NAME, "a host name (lowercase letters, digits and "
                                               "'-', up to 63)")]
LabelKey = Annotated[str, _matching(LABEL_KEY, "a label key (lowercase letters, digits, . _ -)")]
LabelValue = Annotated[str, _matching(LABEL_VALUE, "a label value (up to 63 letters, digits, "
                                                   ". _ -)")]
FilePath = Annotated[str, AfterValidator(_path)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class HostModel(_Strict):
    name: HostName
    address: Annotated[str, AfterValidator(_address)]
    port: Port = 22
    user: Annotated[str, _matching(UNIX_USER, "a user name")] = "root"
    key: FilePath | None = None
    host_key: Annotated[str, _matching(FINGERPRINT, "a host key fingerprint as `ssh-keygen "
                                                    "-l` prints it (SHA256:...)")] | None = None
    known_hosts: FilePath | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in (
            "", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{describe(value)} is not a controller URL like "
                         "http://10.0.0.1:7480")
    return value.rstrip("/")


class HostsModel(_Strict):
    controller: Annotated[str, AfterValidator(_url)] | None = None
    known_hosts: FilePath = DEFAULT_KNOWN_HOSTS
    hosts: Annotated[list[HostModel], Field(max_length=MAX_HOSTS)]


def load_hosts_file(path: str | Path) -> HostsFile:
    path = Path(path)
    return load_hosts_text(read_spec_file(path, "hosts file", MAX_HOSTS_FILE), str(path))


def load_hosts_text(text: str, filename: str) -> HostsFile:
    model, doc = validated(text, filename, "hosts file", MAX_HOSTS_FILE, HostsModel,
                           _not_a_mapping, _listed_twice)
    return HostsFile(tuple(
        DeclaredHost(h.name, SshTarget(h.address, h.port, h.user, h.key or "",
                                       h.host_key or "", h.known_hosts or model.known_hosts),
                     tuple(sorted(h.labels.items())), doc.mark(("hosts", i)).line)
        for i, h in enumerate(model.hosts)), model.controller or "")


def _not_a_mapping(doc: Document) -> SpecProblem:
    return doc.problem((), "expected a mapping with the key hosts (a list of {name, address, "
                           f"...}}), got {describe(doc.data)}")


def _listed_twice(model: HostsModel, doc: Document) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    names: dict[str, int] = {}
    targets: dict[tuple[str, int], tuple[str, int]] = {}
    for i, h in enumerate(model.hosts):
        line = doc.mark(("hosts", i)).line
        if h.name in names:
            problems.append(doc.problem(("hosts", i, "name"), f"host {h.name} is listed twice "
                                        f"(first at line {names[h.name]})"))
        names.setdefault(h.name, line)
        target = (h.address.lower(), h.port)
        if target in targets:
            problems.append(doc.problem(("hosts", i, "address"), f"{h.address}:{h.port} is "
                                        f"host {targets[target][0]} already (line "
                                        f"{targets[target][1]}): one server, one host"))
        targets.setdefault(target, (h.name, line))
    return problems
