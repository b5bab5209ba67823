"""Opening a repository: which backend serves a configured location (a directory, or
S3-compatible object storage)."""

from __future__ import annotations

import os

from markship.repository.fs import FsRepository
from markship.repository.objects import ObjectInfo, StoredObject, TempObject

TYPE_CHECKING = False
if TYPE_CHECKING:
    from markship.config.model import CopySection, RepositorySection
    from markship.repository.base import Repository
    from markship.repository.s3 import S3Location

__all__ = ["FsRepository", "ObjectInfo", "Repository", "StoredObject", "TempObject",
           "location_of", "open_repository"]


def __getattr__(name: str) -> object:
    # The Protocol (and typing with it) loads only when a module asks for it: the WAL
    # commands never do.
    if name == "Repository":
        from markship.repository import base

        return base.Repository
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def location_of(section: RepositorySection | CopySection) -> str | S3Location:
    """Where the configured repository is: a directory, or an S3 location."""
    if section.url is None:
        assert section.path is not None  # the model requires one of them
        return str(section.path)
    from markship.repository.s3 import S3Location

    return S3Location(section.url, section.endpoint or "", section.region or "",
                      str(section.credentials_file or ""), str(section.ca_file or ""),
                      section.lease_seconds)


def open_repository(where: str | os.PathLike[str] | S3Location,
                    recipients: list[str] | None = None,
                    identity_file: str | os.PathLike[str] | None = None,
                    catalog_key_file: str | os.PathLike[str] | None = None, *,
                    strict_catalog: bool = True, make_root: bool = True) -> Repository:
    """Open the repository at a directory or S3 location; with recipients, every object
    is encrypted to them (and read with the identity file; records also with the catalog
    key file). `make_root` False: a directory repository whose folder is missing refuses
    writes instead of creating it (the WAL commands)."""
    if not isinstance(where, (str, os.PathLike)):
        from markship.repository import s3

        if recipients:
            return s3.EncryptedS3Repository(where, recipients, identity_file or None,
                                            catalog_key_file or None,
                                            strict_catalog=strict_catalog)
        return s3.S3Repository(where)
    if recipients:
        from markship.repository.encrypted import EncryptedFsRepository

        return EncryptedFsRepository(where, recipients, identity_file or None,
                                     catalog_key_file or None, strict_catalog=strict_catalog,
                                     make_root=make_root)
    return FsRepository(where, make_root)
