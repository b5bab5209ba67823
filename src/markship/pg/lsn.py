"""Pure LSN, timeline and WAL segment-name arithmetic (no I/O)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

# No regular expressions here: wal-push imports this module once per segment, and compiling
# patterns cost more than the checks themselves.
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
_UPPER_HEX = frozenset("0123456789ABCDEF")
_ANY_HEX = frozenset("0123456789ABCDEFabcdef")


def _hex(text: str, length: int, alphabet: frozenset[str] = _UPPER_HEX) -> bool:
    return len(text) == length and all(c in alphabet for c in text)


def parse_lsn(text: str) -> int:
    """Turn `16/B374D848` into an integer; raise ValueError when it is not an LSN."""
    high, sep, low = text.strip().partition("/")
    if not (sep and 1 <= len(high) <= 8 and 1 <= len(low) <= 8
            and _hex(high, len(high), _ANY_HEX) and _hex(low, len(low), _ANY_HEX)):
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """Turn an integer LSN into PostgreSQL's `X/Y` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class Segment(tuple[int, int]):
    """One WAL segment file: timeline and segment number (ordered by both).

    A plain tuple subclass rather than typing.NamedTuple: wal-push imports this module once
    per segment, and building a NamedTuple class (with typing itself) cost milliseconds.
    """

    __slots__ = ()

    def __new__(cls, timeline: int, number: int) -> Segment:
        return tuple.__new__(cls, (timeline, number))

    @property
    def timeline(self) -> int:
        return self[0]

    @property
    def number(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        return f"Segment(timeline={self[0]}, number={self[1]})"

    def name(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        """The 24-hex-digit file name PostgreSQL uses for this segment."""
        per_log = 0x100000000 // segment_size
        return f"{self.timeline:08X}{self.number // per_log:08X}{self.number % per_log:08X}"

    def next(self) -> Segment:
        return Segment(self.timeline, self.number + 1)

    def start_lsn(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
        return self.number * segment_size


def segment_of(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    """The segment that holds the byte at `lsn` (like `pg_walfile_name` for mid-segment LSNs)."""
    return Segment(timeline, lsn // segment_size)


def segment_holding_end(
    timeline: int, end_lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> Segment:
    """The segment holding the last byte of a record that ends at `end_lsn`.

    A record ending exactly on a segment boundary lives in the previous segment; this is
    how `pg_walfile_name` treats such LSNs too.
    """
    return Segment(timeline, max(end_lsn - 1, 0) // segment_size)


def parse_segment_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    """Parse a 24-hex-digit WAL file name; raise ValueError otherwise."""
    if not _hex(name, 24):
        raise ValueError(f"not a WAL segment name: {name!r}")
    per_log = 0x100000000 // segment_size
    timeline = int(name[0:8], 16)
    log = int(name[8:16], 16)
    seg = int(name[16:24], 16)
    if seg >= per_log:
        raise ValueError(f"segment number out of range for {segment_size}-byte segments: {name}")
    return Segment(timeline, log * per_log + seg)


def wal_file_kind(name: str) -> str:
    """Classify an archived file name: segment, history, backup, partial; or raise ValueError."""
    if _hex(name, 24):
        return "segment"
    if len(name) == 16 and name.endswith(".history") and _hex(name[:8], 8):
        return "history"
    if (len(name) == 40 and name.endswith(".backup") and name[24] == "."
            and _hex(name[:24], 24) and _hex(name[25:33], 8)):
        return "backup"
    if len(name) == 32 and name.endswith(".partial") and _hex(name[:24], 24):
        return "partial"
    raise ValueError(f"not a WAL file name PostgreSQL archives: {name!r}")


def parse_history(text: str) -> list[tuple[int, int]]:
    """Parse a timeline history file into (parent timeline, switch LSN) pairs, oldest first."""
    entries: list[tuple[int, int]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            raise ValueError(f"malformed timeline history line: {line!r}")
        entries.append((int(fields[0]), parse_lsn(fields[1])))
    return entries


# The first page of every WAL segment starts with XLogLongPageHeaderData (access/xlog_internal.h):
# magic u16, info u16, timeline u32, page address u64, remaining length u32 (+4 padding),
# system id u64, segment size u32, block size u32; in the byte order of the server's host.
WAL_HEADER_BYTES = 40
_XLP_LONG_HEADER = 0x0002


def wal_header_problem(head: bytes, name: str,
                       byteorder: Literal["little", "big"] = "little") -> str | None:
    """Why the bytes `head` (a WAL file's first 40 or more) cannot be the start of WAL file
    `name`, or None when they can.

    Checks what ties a segment's content to its name: the page magic of a PostgreSQL release,
    the long header of a segment's first page, a timeline no newer than the name's (the first
    segment of a new timeline starts with its parent's pages) and the page address, which is
    the segment's own start LSN. History and backup files carry no page header (None).
    """
    kind = wal_file_kind(name)
    if kind not in ("segment", "partial"):
        return None
    if len(head) < WAL_HEADER_BYTES:
        return f"only {len(head)} bytes, shorter than a WAL page header"

    def field(offset: int, size: int) -> int:
        return int.from_bytes(head[offset:offset + size], byteorder)

    magic, info, timeline, page_address = field(0, 2), field(2, 2), field(4, 4), field(8, 8)
    segment_size = field(32, 4)
    if magic >> 8 not in (0xD0, 0xD1):
        return f"no WAL page magic (found 0x{magic:04X})"
    if not info & _XLP_LONG_HEADER:
        return "its first page has no long header, so it does not start a segment"
    if segment_size < 1 << 20 or segment_size > 1 << 30 or segment_size & (segment_size - 1):
        return f"implausible segment size {segment_size} in its header"
    segment = parse_segment_name(name[:24], segment_size)
    if not 1 <= timeline <= segment.timeline:
        return f"its header names timeline {timeline}, the file name timeline {segment.timeline}"
    expected = segment.start_lsn(segment_size)
    if page_address != expected:
        held = Segment(segment.timeline, page_address // segment_size).name(segment_size)
        return (f"its header holds the WAL of {format_lsn(page_address)} ({held}), "
                f"not {format_lsn(expected)}")
    return None
