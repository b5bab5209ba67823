"""The advisory-lock key of a group's barrier: what markship.client's two-phase commits and
every mark agree on. Standard library only (the lean path of `markship mark` takes it)."""

from __future__ import annotations


def barrier_key(group: str) -> int:
    """The advisory-lock key of a group's barrier (a signed 64-bit integer)."""
    try:
        from _blake2 import blake2b  # hashlib would load OpenSSL (~5 ms)
    except ImportError:
        from hashlib import blake2b
    digest = blake2b(f"markship-barrier:{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
