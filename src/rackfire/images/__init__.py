"""Images: read-only, content-addressed base layers for instance root filesystems.

    store.py     ImageStore, ImageInfo: layers by sha256 digest, names pointing at them
    build.py     build_host, build_debootstrap, ensure_image (by ImageSpec)
    safe_tar.py  import_tarball: safe extraction of an untrusted rootfs tarball
    tree.py      walking, hashing, sizing and removing trees without following symlinks
"""

from rackfire.images.build import build_debootstrap, build_host, ensure_image
from rackfire.images.safe_tar import ImportLimits, import_tarball
from rackfire.images.store import ImageInfo, ImageStore

__all__ = [
    "ImageInfo",
    "ImageStore",
    "ImportLimits",
    "build_debootstrap",
    "build_host",
    "ensure_image",
    "import_tarball",
]
