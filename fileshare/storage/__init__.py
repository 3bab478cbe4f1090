"""Object storage behind one Protocol (``base``); backends in ``local``, ``s3``, ``gcs``,
chosen by ``factory.open_storage``. Backends are not imported here, so that using one
never imports another's SDK."""

from fileshare.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    PendingCopy,
    Storage,
    StorageError,
    Writer,
)

__all__ = [
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "PendingCopy",
    "Storage",
    "StorageError",
    "Writer",
]
