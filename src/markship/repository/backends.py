"""Opening a repository: which backend serves a configured location."""

from __future__ import annotations

import os

from markship.repository.fs import FsRepository
from markship.repository.objects import ObjectInfo, StoredObject, TempObject

TYPE_CHECKING = False
if TYPE_CHECKING:
    from markship.repository.base import Repository

__all__ = ["FsRepository", "ObjectInfo", "Repository", "StoredObject", "TempObject",
           "open_repository"]


def __getattr__(name: str) -> object:
    # The Protocol (and typing with it) loads only when a module asks for it: the WAL
    # commands never do.
    if name == "Repository":
        from markship.repository import base

        return base.Repository
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_repository(path: str | os.PathLike[str], recipients: list[str] | None = None,
                    identity_file: str | os.PathLike[str] | None = None,
                    catalog_key_file: str | os.PathLike[str] | None = None, *,
                    strict_catalog: bool = True) -> FsRepository:
    """Open the repository at a local or mounted directory; with recipients, every object
    is encrypted to them (and read with the identity file; records also with the catalog
    key file)."""
    if recipients:
        from markship.repository.encrypted import EncryptedFsRepository

        return EncryptedFsRepository(path, recipients, identity_file or None,
                                     catalog_key_file or None, strict_catalog=strict_catalog)
    return FsRepository(path)
