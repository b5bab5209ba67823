"""Repository access: one interface, one backend per kind of storage."""

from __future__ import annotations

import os

from markship.repository.base import ObjectInfo, Repository, StoredObject, TempObject
from markship.repository.fs import FsRepository

__all__ = ["FsRepository", "ObjectInfo", "Repository", "StoredObject", "TempObject",
           "open_repository"]


def open_repository(path: str | os.PathLike[str]) -> FsRepository:
    """Open the repository at a local or mounted directory."""
    return FsRepository(path)
