"""Every request body has a size limit, enforced while it is read: a large Content-Length is
refused before the body is sent, a chunked body as soon as it passes the limit (the answer
comes while the client is still sending), always 413 in the API's error shape."""

from __future__ import annotations

import json
import socket

import httpx

from harness import Server

MiB = 1 << 20


def request(server: Server, method: str, path: str, headers: dict[str, str],
            chunks: int = 0, chunk: bytes = b"") -> tuple[int, dict[str, object]]:
    """Send the head (and `chunks` chunks of a chunked body, never its end); the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        head = {**server.auth, "Host": "x", **headers}
        s.sendall(f"{method} {path} HTTP/1.1\r\n".encode()
                  + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n")
        try:
            for _ in range(chunks):
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed before all of it was sent: what is wanted
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            data = s.recv(65536)
            if not data:
                break
            answer += data
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.partition(b"\r\n\r\n")[2])


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62


def test_a_json_body_over_2_mib_is_refused_before_it_is_read(server: Server) -> None:
    # Content-Length says 3 MiB: refused on the head alone (no body is ever sent).
    status, body = request(server, "POST", "/v1/plan",
                           {"Content-Type": "application/json", "Content-Length": str(3 * MiB)})
    assert status == 413, body
    err = body["error"]
    assert isinstance(err, dict) and err["code"] == "too_large"
    assert "2 MiB" in str(err["message"]), err
    # Chunked, no length: cut off once past 2 MiB, answered while 100 MiB more would follow.
    status, body = request(server, "POST", "/v1/stacks/s/roles/r/scale",
                           {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                           chunks=100, chunk=b" " * MiB)
    assert status == 413, body
    # A body under the limit is read and judged on its content as before.
    r = httpx.post(server.url + "/v1/plan", headers=server.auth, timeout=30,
                   json={"yaml": "#" + "x" * (MiB // 2)})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_spec", r.text


def test_uploads_have_their_own_larger_limits(server: Server) -> None:
    # 8 GiB for an image tarball, 256 MiB for an app source: over it, refused at the head.
    status, body = request(server, "PUT", "/v1/images/big/tarball",
                           {"Content-Length": str(9 << 30)})
    assert status == 413 and "8 GiB" in str(body["error"]), body
    status, body = request(server, "POST", "/v1/sources", {"Content-Length": str(300 * MiB)})
    assert status == 413 and "256 MiB" in str(body["error"]), body
    # Chunked past the source limit: cut off while reading, and the spooled part removed.
    status, body = request(server, "POST", "/v1/sources", {"Transfer-Encoding": "chunked"},
                           chunks=300, chunk=b"\0" * MiB)
    assert status == 413, body
    assert list((server.data_dir / "uploads").glob("*.upload")) == []
    # Over the JSON limit is not too large for an upload: read, then judged as a tarball.
    r = httpx.post(server.url + "/v1/sources", headers=server.auth, content=b"x" * (3 * MiB),
                   timeout=30)
    assert r.status_code == 400 and "tar" in r.json()["error"]["message"], r.text


def test_the_openapi_documents_the_limits(server: Server) -> None:
    api = httpx.get(server.url + "/openapi.json", timeout=10).json()
    for path, method in (("/v1/plan", "post"), ("/v1/sources", "post"),
                         ("/v1/images/{name}/tarball", "put"),
                         ("/v1/stacks/{stack}/roles/{role}/scale", "post")):
        op = api["paths"][path][method]
        assert op["responses"]["413"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"}, (path, op["responses"])
        assert "iB" in op["requestBody"]["description"], op["requestBody"]
