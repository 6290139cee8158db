"""The typed client of the REST API, used by the CLI (and by tests, as a user would).

Each method returns the JSON of its route's answer as is, typed by api/shapes.py: the
TypedDict generated from the route's model in api/answers.py (imported only for the type
checker: a TypedDict is a plain dict at run time, and pydantic stays out of the CLI)."""

from __future__ import annotations

import getpass
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import httpx

from rackfire.errors import AgentOffline, RackfireError

if TYPE_CHECKING:
    from rackfire.api.shapes import (
        AutoscaleShape,
        BackupShape,
        CapacityShape,
        ChangeShape,
        CloneShape,
        DestroyShape,
        DiffShape,
        DrainShape,
        EventShape,
        FenceShape,
        HaShape,
        HealthShape,
        HostsApplyShape,
        HostShape,
        HostsPlanShape,
        ImageShape,
        InstanceShape,
        JobShape,
        LoadTestShape,
        MigrationShape,
        OperateShape,
        PlacementsShape,
        PlanShape,
        ReleaseShape,
        RemovedShape,
        RepositoryShape,
        RestoreShape,
        RunShape,
        SnapshotShape,
        SourceShape,
        StackFileSchemaShape,
        StackShape,
        StatsShape,
        TarballShape,
        TokenShape,
        VerifyShape,
    )

DEFAULT_URL = "http://127.0.0.1:7480"


class ApiError(RackfireError):
    """An error the server answered with; carries its JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error") or {"message": str(body.get("detail", body))}
        super().__init__(str(err.get("message", "")), hint=str(err.get("hint", "")))
        self.status = status
        self.body = err
        self.code = str(err.get("code", "error"))


class ServerUnreachable(AgentOffline):
    code = "server_unreachable"


def default_data_dir() -> Path:
    return Path(os.environ.get("RACKFIRE_DATA_DIR") or "/var/lib/rackfire")


def actor() -> str:
    """Who is asking, for the server's event log: `user@host`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def read_token(data_dir: str | Path | None = None) -> str:
    """RACKFIRE_TOKEN, or the token file of the server's data dir (readable by root)."""
    if token := os.environ.get("RACKFIRE_TOKEN"):
        return token
    base = Path(data_dir) if data_dir else default_data_dir()
    try:
        return (base / "token").read_text().strip()
    except OSError:
        return ""


class Client:
    def __init__(self, url: str | None = None, timeout: float = 120.0,
                 data_dir: str | Path | None = None) -> None:
        self.url = (url or os.environ.get("RACKFIRE_URL") or DEFAULT_URL).rstrip("/")
        self._data_dir = data_dir
        # Certificates are loaded only for https: a plain-http client starts ~25 ms sooner.
        self._http = httpx.Client(base_url=self.url, timeout=timeout,
                                  verify=self.url.startswith("https://"))

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        # Read each time: `up` may have started the server (and made the token) just now.
        headers = {"Authorization": f"Bearer {read_token(self._data_dir)}",
                   "X-Rackfire-Actor": actor(), **kw.pop("headers", {})}
        try:
            r = self._http.request(method, path, headers=headers, **kw)
        except httpx.TransportError as e:
            raise ServerUnreachable(
                f"no rackfire server answers at {self.url} ({e.__class__.__name__})",
                hint="start one with `rackfire server` (or use `rackfire up`), "
                "or set RACKFIRE_URL") from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": {"message": r.text}}
            raise ApiError(r.status_code, body)
        return r.json()

    def alive(self) -> bool:
        try:
            self._call("GET", "/v1/health")
        except RackfireError:
            return False
        return True

    def health(self) -> HealthShape:
        return cast("HealthShape", self._call("GET", "/v1/health"))

    # A stack file goes with what its paths name, uploaded (`sources`: role -> app source
    # digest, `tarballs`: image -> tarball sha256): the server reads no path of ours.
    def plan(self, text: str, filename: str, sources: dict[str, str] | None = None,
             tarballs: dict[str, str] | None = None, *,
             explain: bool = False) -> PlanShape:
        return cast("PlanShape", self._call("POST", "/v1/plan", json={
            "yaml": text, "filename": filename, "sources": sources or {},
            "tarballs": tarballs or {}}, params={"explain": "true"} if explain else None))

    def apply(self, text: str, filename: str, expected_generation: int | None = None,
              sources: dict[str, str] | None = None,
              tarballs: dict[str, str] | None = None) -> ChangeShape:
        return cast("ChangeShape", self._call("POST", "/v1/apply", json={
            "yaml": text, "filename": filename, "expected_generation": expected_generation,
            "sources": sources or {}, "tarballs": tarballs or {}}))

    def upload_source(self, src_dir: Path) -> str:
        """Pack an app's source dir and upload it; its digest on the server."""
        with tempfile.TemporaryFile() as f:
            from rackfire.api.pack import pack_source  # only `apply` and `push` pack
            pack_source(src_dir, f)
            f.seek(0)
            return self.upload_packed(f)

    def upload_packed(self, packed: IO[bytes]) -> str:
        """Upload a source packed by `api/pack.py` (from its start); its digest."""
        body: SourceShape = self._call("POST", "/v1/sources", content=_chunks(packed),
                                       headers={"content-type": "application/gzip"})
        return body["digest"]

    def has_tarball(self, digest: str) -> bool:
        try:
            self._call("GET", f"/v1/tarballs/{digest}")
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    def upload_tarball(self, tarball: Path) -> str:
        """Upload a rootfs tarball for a stack file's `from: tarball` image; its sha256."""
        with open(tarball, "rb") as f:
            body: TarballShape = self._call("POST", "/v1/tarballs", content=_chunks(f),
                                            timeout=3600)
        return body["digest"]

    def push(self, stack: str, role: str, source: str | None, label: str,
             image: str | None) -> ChangeShape:
        return cast("ChangeShape", self._call(
            "POST", f"/v1/stacks/{stack}/roles/{role}/push",
            json={"source": source, "label": label, "image": image}))

    def rollback(self, stack: str, role: str, version: int | None) -> ChangeShape:
        return cast("ChangeShape", self._call(
            "POST", f"/v1/stacks/{stack}/roles/{role}/rollback", json={"version": version}))

    def releases(self, stack: str, role: str | None = None) -> list[ReleaseShape]:
        return cast("list[ReleaseShape]", self._call(
            "GET", f"/v1/stacks/{stack}/releases", params={"role": role} if role else {}))

    # runs and jobs --------------------------------------------------------------------

    def start_task(self, stack: str, role: str, command: list[str],
                   timeout: float | None) -> RunShape:
        return cast("RunShape", self._call(
            "POST", f"/v1/runs/{stack}",
            json={"role": role, "command": command, "timeout": timeout}))

    def run(self, stack: str, number: int) -> RunShape:
        return cast("RunShape", self._call("GET", f"/v1/runs/{stack}/{number}"))

    def runs(self, stack: str, role: str | None = None, limit: int = 100) -> list[RunShape]:
        params: dict[str, Any] = {"limit": limit} | ({"role": role} if role else {})
        return cast("list[RunShape]", self._call("GET", f"/v1/runs/{stack}",
                                                 params=params))

    def cancel_run(self, stack: str, number: int) -> RunShape:
        return cast("RunShape", self._call("POST", f"/v1/runs/{stack}/{number}/cancel"))

    def autoscale(self, stack: str, role: str | None = None) -> list[AutoscaleShape]:
        return cast("list[AutoscaleShape]", self._call(
            "GET", f"/v1/autoscale/{stack}", params={"role": role} if role else {}))

    def jobs(self, stack: str) -> list[JobShape]:
        return cast("list[JobShape]", self._call("GET", f"/v1/jobs/{stack}"))

    # load tests -----------------------------------------------------------------------

    def start_load(self, stack: str, target: str, clients: int, rate: float,
                   duration: float, connections: int = 64) -> LoadTestShape:
        return cast("LoadTestShape", self._call(
            "POST", "/v1/loadtests",
            json={"stack": stack, "target": target, "clients": clients, "rate": rate,
                  "duration": duration, "connections": connections}))

    def load_test(self, test_id: str) -> LoadTestShape:
        return cast("LoadTestShape", self._call("GET", f"/v1/loadtests/{test_id}"))

    def take_snapshot(self, stack: str, role: str | None, index: int | None,
                      name: str | None) -> SnapshotShape:
        return cast("SnapshotShape", self._call(
            "POST", "/v1/snapshots", json={"target": _target(stack, role, index), "name": name},
            timeout=900))

    def snapshots(self, stack: str | None = None) -> list[SnapshotShape]:
        return cast("list[SnapshotShape]", self._call(
            "GET", "/v1/snapshots", params={"stack": stack} if stack else {}))

    def remove_snapshot(self, stack: str, name: str) -> SnapshotShape:
        return cast("SnapshotShape", self._call(
            "DELETE", f"/v1/snapshots/{stack}/{name}", timeout=300))

    def restore(self, stack: str, name: str, to: str | None, confirm: bool) -> RestoreShape:
        return cast("RestoreShape", self._call(
            "POST", f"/v1/snapshots/{stack}/{name}/restore",
            json={"to": to, "confirm": confirm}))

    def add_repository(self, name: str, url: str, password: str,
                       env: dict[str, str]) -> RepositoryShape:
        return cast("RepositoryShape", self._call(
            "POST", "/v1/repositories", timeout=300,
            json={"name": name, "url": url, "password": password, "env": env}))

    def repositories(self) -> list[RepositoryShape]:
        return cast("list[RepositoryShape]", self._call("GET", "/v1/repositories"))

    def remove_repository(self, name: str) -> RepositoryShape:
        return cast("RepositoryShape", self._call("DELETE", f"/v1/repositories/{name}"))

    def take_backup(self, stack: str, role: str | None, index: int | None, repository: str,
                    name: str | None) -> BackupShape:
        return cast("BackupShape", self._call(
            "POST", "/v1/backups", timeout=6 * 3600,
            json={"target": _target(stack, role, index), "repository": repository,
                  "name": name}))

    def backups(self, stack: str | None = None) -> list[BackupShape]:
        return cast("list[BackupShape]", self._call(
            "GET", "/v1/backups", params={"stack": stack} if stack else {}))

    def remove_backup(self, stack: str, name: str) -> BackupShape:
        return cast("BackupShape", self._call("DELETE", f"/v1/backups/{stack}/{name}",
                                              timeout=600))

    def verify_backup(self, stack: str, name: str) -> VerifyShape:
        return cast("VerifyShape", self._call("POST", f"/v1/backups/{stack}/{name}/verify",
                                              timeout=6 * 3600))

    def restore_backup(self, stack: str, name: str, to: str | None,
                       confirm: bool) -> RestoreShape:
        return cast("RestoreShape", self._call(
            "POST", f"/v1/backups/{stack}/{name}/restore", timeout=6 * 3600,
            json={"to": to, "confirm": confirm}))

    def clone(self, stack: str, new: str, snapshot: str | None,
              port_offset: int | None) -> CloneShape:
        return cast("CloneShape", self._call(
            "POST", f"/v1/clones/{stack}", timeout=900,
            json={"new": new, "snapshot": snapshot, "port_offset": port_offset}))

    def promote(self, stack: str, over: str) -> CloneShape:
        return cast("CloneShape", self._call("POST", f"/v1/clones/{stack}/promote",
                                             json={"over": over}))

    def diff(self, a: str, b: str) -> DiffShape:
        return cast("DiffShape", self._call("GET", f"/v1/diff/{a}/{b}"))

    def stack(self, name: str) -> StackShape:
        return cast("StackShape", self._call("GET", f"/v1/stacks/{name}"))

    def stacks(self) -> list[StackShape]:
        return cast("list[StackShape]", self._call("GET", "/v1/stacks"))

    def destroy(self, name: str, keep_data: bool = False) -> DestroyShape:
        return cast("DestroyShape", self._call(
            "DELETE", f"/v1/stacks/{name}", params={"keep_data": "true"} if keep_data else {}))

    def instances(self, stack: str | None = None) -> list[InstanceShape]:
        return cast("list[InstanceShape]", self._call(
            "GET", "/v1/instances", params={"stack": stack} if stack else {}))

    def scale(self, stack: str, role: str, count: int) -> ChangeShape:
        return cast("ChangeShape", self._call(
            "POST", f"/v1/stacks/{stack}/roles/{role}/scale", json={"count": count}))

    def resize(self, stack: str, role: str, **changes: Any) -> ChangeShape:
        return cast("ChangeShape", self._call(
            "POST", f"/v1/stacks/{stack}/roles/{role}/resize", json=changes))

    def operate(self, stack: str, operation: str, role: str | None,
                index: int | None) -> OperateShape:
        return cast("OperateShape", self._call(
            "POST", f"/v1/stacks/{stack}/{operation}", json={"role": role, "index": index}))

    def stats(self, stack: str, role: str | None = None,
              index: int | None = None) -> list[StatsShape]:
        params = {k: v for k, v in {"stack": stack, "role": role, "index": index}.items()
                  if v is not None}
        return cast("list[StatsShape]", self._call("GET", "/v1/stats", params=params))

    def events(self, stack: str | None = None, after: int = 0,
               limit: int = 1000) -> list[EventShape]:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if stack:
            params["stack"] = stack
        return cast("list[EventShape]", self._call("GET", "/v1/events", params=params))

    def images(self) -> list[ImageShape]:
        return cast("list[ImageShape]", self._call("GET", "/v1/images"))

    def build_image(self, **spec: Any) -> ImageShape:
        return cast("ImageShape", self._call("POST", "/v1/images", json=spec, timeout=3600))

    def import_image(self, name: str, tarball: Path) -> ImageShape:
        with open(tarball, "rb") as f:
            return cast("ImageShape", self._call(
                "PUT", f"/v1/images/{name}/tarball", content=_chunks(f), timeout=3600))

    def remove_image(self, name: str) -> RemovedShape:
        return cast("RemovedShape", self._call("DELETE", f"/v1/images/{name}"))

    def schema(self) -> StackFileSchemaShape:
        return cast("StackFileSchemaShape", self._call("GET", "/v1/schema"))

    def create_token(self, ttl: float, uses: int) -> TokenShape:
        return cast("TokenShape", self._call(
            "POST", "/v1/tokens", json={"ttl": ttl, "uses": uses}))

    def capacity(self) -> CapacityShape:
        return cast("CapacityShape", self._call("GET", "/v1/capacity"))

    def hosts(self) -> list[HostShape]:
        return cast("list[HostShape]", self._call("GET", "/v1/hosts"))

    def hosts_plan(self, text: str, filename: str) -> HostsPlanShape:
        return cast("HostsPlanShape", self._call("POST", "/v1/hosts/plan", json={
            "yaml": text, "filename": filename}))

    def hosts_apply(self, text: str, filename: str) -> HostsApplyShape:
        return cast("HostsApplyShape", self._call("POST", "/v1/hosts/apply", json={
            "yaml": text, "filename": filename}, timeout=3600))

    def drain(self, name: str) -> DrainShape:
        return cast("DrainShape", self._call("POST", f"/v1/hosts/{name}/drain"))

    def fence(self, name: str) -> FenceShape:
        return cast("FenceShape", self._call("POST", f"/v1/hosts/{name}/fence"))

    def ready(self, name: str) -> HostShape:
        return cast("HostShape", self._call("POST", f"/v1/hosts/{name}/ready"))

    def ha(self) -> list[HaShape]:
        return cast("list[HaShape]", self._call("GET", "/v1/ha"))

    def migrate(self, instance: str, to: str | None) -> MigrationShape:
        return cast("MigrationShape", self._call(
            "POST", "/v1/migrations", json={"instance": instance, "to": to}))

    def migrations(self, stack: str | None = None) -> list[MigrationShape]:
        return cast("list[MigrationShape]", self._call(
            "GET", "/v1/migrations", params={"stack": stack} if stack else {}))

    def placements(self, stack: str | None = None) -> PlacementsShape:
        return cast("PlacementsShape", self._call(
            "GET", "/v1/placements", params={"stack": stack} if stack else {}))

    def remove_host(self, name: str) -> RemovedShape:
        return cast("RemovedShape", self._call("DELETE", f"/v1/hosts/{name}"))

    def stop_server(self) -> None:
        self._call("POST", "/v1/server/stop")


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(1 << 20):
        yield chunk


def _target(stack: str, role: str | None, index: int | None) -> str:
    """STACK[/ROLE[/INDEX]], as the API takes a target."""
    return "/".join([stack, *([role] if role else []),
                     *([str(index)] if role and index is not None else [])])
