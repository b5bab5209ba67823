"""Records kept in the repository: the checksummed envelope they are stored in, reading and
writing them, and damaged ones named and skipped.

Every record is a JSON envelope carrying the sha256 of its body, so a damaged record is
detected like any other damaged object. A damaged record is reported (once per process, or
into a list for verify) and left out, never hiding the good ones beside it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from markship import names
from markship.errors import CorruptObject, ObjectMissing
from markship.repository import envelope as envelope_mod
from markship.repository.base import Repository, StagedObject
from markship.repository.objects import StoredObject

FORMAT = envelope_mod.FORMAT

# Fields that become repository keys or recovery settings: a record carrying anything else
# fails its model, and is damaged (markship.names).
Name = Annotated[str, AfterValidator(names.validated)]
Key = Annotated[str, AfterValidator(names.validated_key)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectRef(Record):
    key: Key
    size: int
    sha256: str


R = TypeVar("R", bound=Record)


def encode(record: Record) -> bytes:
    """A record as stored: its JSON body in an envelope carrying the body's checksum."""
    return envelope_mod.seal(type(record).__name__, record.model_dump(mode="json"))


def decode(data: bytes, cls: type[R], key: str) -> R:
    """Check a record envelope's checksum and parse its body; raise CorruptObject if bad."""
    try:
        envelope = json.loads(data)
        body = envelope["body"]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if hashlib.sha256(canonical).hexdigest() != envelope["sha256"]:
            raise CorruptObject(f"record {key} fails its checksum",
                                "the repository object was altered or damaged")
        return cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(body)"
        raise CorruptObject(names.printable(f"record {key} is not a valid {cls.__name__} "
                                            f"({where[:80]}: {first['msg']})"),
                            "the repository object was altered or damaged") from None
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        if isinstance(exc, CorruptObject):
            raise
        raise CorruptObject(f"record {key} is not a valid {cls.__name__} (not a record "
                            "envelope in JSON)",
                            "the repository object was altered or damaged") from None


def write_record(repo: Repository, key: str, record: Record, *,
                 overwrite: bool = False) -> StoredObject:
    return repo.write_bytes(key, encode(record), overwrite=overwrite, metadata=True)


def stage_record(repo: Repository, key: str, content: Callable[[], bytes]) -> StagedObject:
    """Store a record (`encode()`d) under a temp name (markship.repository.envelope)."""
    return envelope_mod.stage_sealed(repo, key, content)


def read_record(repo: Repository, key: str, cls: type[R]) -> R:
    return decode(repo.read_bytes(key), cls, key)


# -- damaged records: named and skipped, never hiding the good ones --------------------------------


@dataclass(frozen=True)
class Damaged:
    """A record no command may use: unreadable, failing its checksum or its model (a name
    that fails markship.names included), or stored under another name than it carries."""

    key: str
    problem: str  # one line naming the key

    FIX = ("inspect it, then move it out of the repository; if it recorded a backup set or "
           "a mark, that one is lost: take a new backup or mark")

    def warning(self) -> str:
        return f"{self.problem}; it was skipped: run markship verify"


def _warn_on_stderr(damaged: Damaged) -> None:
    print(f"markship: warning: {damaged.warning()}", file=sys.stderr)


class _Notices:
    """Damaged records heard of in this process, and who is told (once per key)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.listener: Callable[[Damaged], None] = _warn_on_stderr


_notices = _Notices()


def on_damage(listener: Callable[[Damaged], None]) -> None:
    """Who hears of damaged records (once per key and process): stderr by default; the
    agent logs them."""
    _notices.listener = listener


def report_damage(key: str, problem: str, found: list[Damaged] | None = None) -> None:
    """A damaged record: into `found` when given (verify), else to the listener once."""
    damaged = Damaged(key, names.printable(problem))
    if found is not None:
        found.append(damaged)
        return
    with _notices.lock:
        if key in _notices.seen:
            return
        _notices.seen.add(key)
    _notices.listener(damaged)


def read_good(repo: Repository, key: str, cls: type[R], stem: Callable[[R], str] | None = None,
              found: list[Damaged] | None = None) -> R | None:
    """The record at `key`; None when it is gone (removed since it was listed) or damaged
    (reported). `stem`: the file name (without .json) the record must be stored under."""
    try:
        record = read_record(repo, key, cls)
    except ObjectMissing:
        return None
    except CorruptObject as exc:
        report_damage(key, exc.message, found)
        return None
    if stem is not None and f"{stem(record)}.json" != key.rpartition("/")[2]:
        report_damage(key, f"record {key} holds {stem(record)!r}, not what its name says",
                      found)
        return None
    return record


def read_folder(repo: Repository, prefix: str, cls: type[R],
                stem: Callable[[R], str] | None = None,
                found: list[Damaged] | None = None) -> list[R]:
    """The good records stored directly in folder `prefix` (ending in '/'), in name order;
    damaged ones are left out and reported."""
    records = []
    for name in sorted(repo.children(prefix)):
        if name.endswith(".json"):
            record = read_good(repo, prefix + name, cls, stem, found)
            if record is not None:
                records.append(record)
    return records


def good_folders(repo: Repository, prefix: str, found: list[Damaged] | None = None,
                 ) -> list[str]:
    """The sub-folders of `prefix` whose names can name objects (markship.names); any other
    is reported as damaged, never read."""
    good = []
    for name in sorted(repo.children(prefix)):
        if names.is_name(name):
            good.append(name)
        else:
            report_damage(f"{prefix}{name}", f"folder {prefix}{name!r} has a name markship "
                          "never writes", found)
    return good
