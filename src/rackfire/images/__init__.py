"""Images: read-only, content-addressed base layers for instance root filesystems.

    store.py      ImageStore, ImageInfo: layers by sha256 digest, names pointing at them
    build.py      build_host, build_debootstrap, ensure_image (by ImageSpec)
    hostcache.py  the host-wide cache of debootstrap trees, shared by every data dir
    safe_tar.py   import_tarball, extract_tarball: safe extraction of an untrusted tarball
    tar_stream.py its reading: by content, hashed, bounded, strict about the archive's end
    tar_checks.py ImportLimits, and the checks of each member that need no tree on disk
    tar_extract.py the members written, never through a symlink
    sources.py    store_source, source_dir: uploaded app sources (api/pack.py packs them)
    release.py    build_release: an app source plus its Python deps, as a layer
    transfer.py   pack_layer, receive_layer: a layer from the controller to a joined host,
                  verified by its digest
    tree.py       walking, hashing, sizing, copying and removing trees without following
                  symlinks
"""

from rackfire.images.build import build_debootstrap, build_host, ensure_image
from rackfire.images.release import build_release
from rackfire.images.safe_tar import import_tarball
from rackfire.images.sources import source_dir, store_source
from rackfire.images.store import ImageInfo, ImageStore
from rackfire.images.tar_checks import ImportLimits

__all__ = [
    "ImageInfo",
    "ImageStore",
    "ImportLimits",
    "build_debootstrap",
    "build_host",
    "build_release",
    "ensure_image",
    "import_tarball",
    "source_dir",
    "store_source",
]
