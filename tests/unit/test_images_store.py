"""ImageStore: commit, tag, cache records, and what commit refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rackfire.errors import NotFound, PrereqError
from rackfire.images.store import ImageStore

D1 = "a" * 64
D2 = "b" * 64


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def staged(store: ImageStore, content: bytes = b"x") -> Path:
    d = store.tmp / f"s-{len(list(store.tmp.iterdir()))}"
    d.mkdir()
    (d / "file").write_bytes(content)
    return d


def test_commit_reuses_existing_layer(store: ImageStore) -> None:
    a = store.commit("a", staged(store, b"first"), D1, "host", ("/usr",))
    b = store.commit("b", staged(store, b"second"), D1, "host", ("/usr",))
    assert (a.rootfs / "file").read_bytes() == b"first"  # the second staging was discarded
    assert a.rootfs == b.rootfs and a.size_bytes == 5 and a.host_binds == ("/usr",)
    assert list(store.tmp.iterdir()) == []
    rec = json.loads((store.names / "a.json").read_text())
    assert rec["digest"] == D1


def test_commit_refuses_bad_input(store: ImageStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(PrereqError, match="not a directory inside"):
        store.commit("a", outside, D1, "host")
    with pytest.raises(PrereqError, match="invalid digest"):
        store.commit("a", staged(store), "../../etc", "host")
    with pytest.raises(PrereqError, match="invalid image source"):
        store.commit("a", staged(store), D1, "docker")
    with pytest.raises(PrereqError, match="invalid host bind"):
        store.commit("a", staged(store), D1, "host", ("usr",))
    with pytest.raises(PrereqError, match="invalid image name"):
        store.commit("A", staged(store), D1, "host")
    assert store.list() == [] and list(store.layers.iterdir()) == []


def test_tag_and_cache(store: ImageStore) -> None:
    with pytest.raises(NotFound):
        store.tag("a", D1)
    store.commit("a", staged(store), D1, "debootstrap", build_key=D2)
    store.cache_put(D2, D1)
    assert store.cache_get(D2) == D1
    b = store.tag("b", D1, build_key=D2)
    assert b.build_key == D2 and b.source == "debootstrap"
    assert store.remove("a") and store.cache_get(D2) == D1  # "b" keeps the layer
    assert store.remove("b") and store.cache_get(D2) is None
    assert list(store.cache.iterdir()) == [] and list(store.layers.iterdir()) == []


def test_damaged_name_file_is_ignored(store: ImageStore) -> None:
    (store.names / "evil.json").write_text(json.dumps({"digest": "../../etc"}))
    (store.names / "junk.json").write_text("{not json")
    assert store.get("evil") is None and store.list() == []


def test_staging_is_removed_on_error(store: ImageStore) -> None:
    with pytest.raises(RuntimeError), store.staging() as st:
        (st / "f").write_text("x")
        raise RuntimeError
    assert list(store.tmp.iterdir()) == []
