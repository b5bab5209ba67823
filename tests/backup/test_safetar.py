"""Unpacking hostile tar archives with markship.backup.safetar, as `markship files restore` does.

The archives are built here member by member, among them the shapes of the published
bypasses of Python's own tar extraction filter (CVE-2024-12718, CVE-2025-4138, CVE-2025-4330,
CVE-2025-4435, CVE-2025-4517). Whatever an archive holds, nothing outside the target directory
is created, written, chmod'ed, chown'ed or touched (a canary file next to the target keeps its
content, mode, owner and mtime), a refused archive leaves the target empty and ends in one
line naming the member, and no member is restored with set-id, sticky or group/other write
bits. The first tests unpack in-process; the last ones plant the archive in a repository as a
capture and run `markship files restore`. No PostgreSQL server is needed.
"""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from markship.backup import safetar
from markship.pg.scratch import chown_to
from tests.support.checks import refused_line
from tests.support.filesets import plant_capture, portal_fileset
from tests.support.servers import OS_USER, markship_ok, run_markship

Member = tuple[tarfile.TarInfo, bytes]
CANARY = b"canary: nothing may write here\n"
CANARY_MTIME = 1_000_000_000  # 2001: any utime() on it shows
AS_ROOT = os.geteuid() == 0


def _info(name: str, kind: bytes, mode: int, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 1_700_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _file(name: str, data: bytes = b"restored\n", mode: int = 0o644,
          **attrs: object) -> Member:
    info = _info(name, tarfile.REGTYPE, mode, **attrs)
    info.size = len(data)
    return info, data


def _dir(name: str, mode: int = 0o755, **attrs: object) -> Member:
    return _info(name, tarfile.DIRTYPE, mode, **attrs), b""


def _link(name: str, target: str) -> Member:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), b""


def _hard(name: str, target: str) -> Member:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), b""


def _node(name: str, kind: bytes) -> Member:
    return _info(name, kind, 0o666, devmajor=1, devminor=3), b""


def _pax(member: Member) -> Member:
    """The member with its name and link target in a pax header, which (unlike the ustar
    fields) can hold a NUL byte."""
    info, data = member
    info.pax_headers = {"path": info.name, "linkpath": info.linkname}
    return info, data


def _archive(members: list[Member]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return raw.getvalue()


def _unpack(archive: bytes, target: Path) -> safetar.Counts:
    """What filesets.restore() does with a capture's tar stream: place member by member,
    settle the directories, and empty the target on any failure."""
    root_fd = safetar.open_target(target)
    placer = safetar.Placer(root_fd, "test archive")
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r|") as tar:
                for member in tar:
                    placer.place(member, tar)
            placer.finish()
        except BaseException:
            safetar.empty(target)
            raise
    finally:
        os.close(root_fd)
    return placer.counts


# -- the target, and what lies next to it ---------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """`root/t` is the target; `root/outside/canary` what an archive aims at."""

    root: Path

    @property
    def target(self) -> Path:
        return self.root / "t"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def canary(self) -> Path:
        return self.outside / "canary"


def _place_canary(where: Where) -> None:
    """A file root may not change unnoticed: another owner, mode 0640, an old mtime."""
    where.outside.mkdir()
    where.canary.write_bytes(CANARY)
    where.canary.chmod(0o640)
    chown_to(where.canary, OS_USER)
    os.utime(where.canary, (CANARY_MTIME, CANARY_MTIME))
    os.utime(where.outside, (CANARY_MTIME, CANARY_MTIME))


def _outside_state(where: Where) -> dict[str, tuple[object, ...]]:
    """Type, mode, owner, mtime and content of everything below the root but outside the
    target (and the repository, where a refused restore writes its journal entry)."""
    state: dict[str, tuple[object, ...]] = {}
    for path in where.root.rglob("*"):
        rel = path.relative_to(where.root)
        if rel.parts[0] in ("t", "repo"):
            continue
        st = path.lstat()
        content: object = None
        if stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        state[str(rel)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content)
    return state


def _canary_untouched(where: Where) -> None:
    st = where.canary.lstat()
    assert where.canary.read_bytes() == CANARY
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert where.canary.owner() == (OS_USER if AS_ROOT else pwd.getpwuid(os.getuid()).pw_name)
    assert st.st_mtime == CANARY_MTIME
    assert sorted(p.name for p in where.outside.iterdir()) == ["canary"]


# -- archives in the shape of published bypasses --------------------------------------------------

# An archive's members, and the start of the refusal it must get: unsafe member 'name' (why
Refusal = tuple[list[Member], str]
Build = Callable[[Where], Refusal]


def _at(name: str, why: str) -> str:
    return f"unsafe member {name!r} ({why}"


def realpath_overflow(where: Where) -> Refusal:
    """CVE-2025-4517: a chain of links between directories with names so long that the path
    through all the links, once expanded, is longer than PATH_MAX, so that realpath() stops
    expanding it; a link at the end climbs back out, then a hard link and a new file go
    through it."""
    hops = "abcdefghijklmnop"
    path_max = os.pathconf(where.root, "PC_PATH_MAX")
    long = "d" * ((path_max - len(str(where.target)) - 1) // (len(hops) + 1))
    members: list[Member] = []
    real = ""
    for hop in hops:
        members += [_dir(real + long, mode=0o777), _link(real + hop, long)]
        real += long + "/"
    climber = "/".join(hops) + "/" + "l" * 254
    members += [_link(climber, "/".join([".."] * len(hops))),
                _link("escape", climber + "/.."),
                _hard("flag", "escape/outside/canary"),
                _file("flag", b"overwritten\n"),
                _file("escape/outside/created", b"new\n")]
    return members, _at(climber, "its path goes through a, which is a symlink")


def link_checked_before_its_parts_exist(where: Where) -> Refusal:
    """CVE-2025-4138: a link whose target passes through a name that does not exist yet (so
    a check of the target at that moment sees it inside), then that name as a link to ".",
    then a file written through the first link."""
    return [_link("escape", "later/.."), _link("later", "."),
            _file("escape/outside/created", b"new\n")], _at(
        "escape", "a link to later/.., outside the target directory")


def link_target_counted_from_the_link(where: Where) -> Refusal:
    """CVE-2025-4330: a link whose `..` steps stay inside when counted from the link itself
    but leave the target when counted, as the system does, from its directory; then a file of
    the same name, to be written through it."""
    return [_link("etc/app/conf", "../../../outside/canary"),
            _file("etc/app/conf", b"overwritten\n")], _at(
        "etc/app/conf", "a link to ../../../outside/canary, outside the target directory")


def metadata_through_a_link(where: Where) -> Refusal:
    """CVE-2024-12718: an absolute link to a file outside, then a directory member of the same
    name whose mode (0777), owner (root) and mtime (0) an unpacker would apply through it."""
    return [_link("etc/canary", str(where.canary)),
            _dir("etc/canary", mode=0o777, mtime=0, uname="root")], _at(
        "etc/canary", "its path goes through etc/canary, which is a symlink")


def refused_member_then_more(where: Where) -> Refusal:
    """CVE-2025-4435: a refused member between two good ones (Python's tarfile, told to log
    errors instead of raising, extracted the refused member anyway)."""
    return [_file("etc/app/before.conf"), _file("../outside/canary", b"overwritten\n"),
            _file("etc/app/after.conf")], _at("../outside/canary",
                                              "it contains a '..' component")


REFUSED = "refused before anything is written; canary outside untouched"
ONE_LINE = "one line naming the member, no traceback; canary outside untouched"


@dataclass(frozen=True)
class Case:
    """An archive to refuse, and its row in the reliability table."""

    id: str
    build: Build
    case: str
    fault: str
    expected: str = REFUSED


def _params(cases: list[Case], layer: str) -> list[pytest.ParameterSet]:
    return [pytest.param(c.build, id=c.id, marks=pytest.mark.reliability(
        f"{layer}, {c.case}", fault=c.fault, expected=c.expected)) for c in cases]


CVE_CASES = [
    Case("CVE-2025-4517", realpath_overflow,
         "CVE-2025-4517 archive (link chain overflowing PATH_MAX)",
         "links between 230-character directories, a link climbing out past realpath's "
         "limit, a hard link and a new file through it",
         "refused at the first member through a link; canary outside untouched"),
    Case("CVE-2025-4138", link_checked_before_its_parts_exist,
         "CVE-2025-4138 archive (link through a later link)",
         "escape -> later/.., then later -> ., then a new file through escape",
         "refused at the first link; canary outside untouched"),
    Case("CVE-2025-4330", link_target_counted_from_the_link,
         "CVE-2025-4330 archive (link climbing one level too many)",
         "etc/app/conf -> ../../../outside/canary, then a file of that name",
         "refused at the link; canary outside untouched"),
    Case("CVE-2024-12718", metadata_through_a_link,
         "CVE-2024-12718 archive (metadata through a link)",
         "absolute link to a file outside, then a directory of that name with mode 0777, "
         "owner root, mtime 0",
         "the link is kept inside, the directory refused; canary's mode, owner and mtime "
         "unchanged"),
    Case("CVE-2025-4435", refused_member_then_more,
         "CVE-2025-4435 archive (refused member between good ones)",
         "good file, ../outside/canary, good file",
         "the whole restore refused, the target left empty (a refusal is never a skip)"),
]


def _one(member: Member, why: str) -> Build:
    return lambda where: ([member], _at(member[0].name, why))


REFUSALS = [
    Case("symlink-out",
         lambda w: ([_link("etc/app/out", "../../../outside"),
                     _file("etc/app/out/created", b"new\n")],
                    _at("etc/app/out", "a link to ../../../outside, outside")),
         "relative symlink out of the target",
         "etc/app/out -> ../../../outside, then a new file through it"),
    Case("through-absolute-symlink",
         lambda w: ([_link("etc/out", str(w.outside)), _file("etc/out/created", b"new\n")],
                    _at("etc/out/created", "its path goes through etc/out, which is a symlink")),
         "file through an absolute symlink",
         "etc/out -> /…/outside (kept, rewritten inside), then etc/out/created",
         "refused at the file (its path goes through a symlink); canary untouched"),
    Case("hard-link-out",
         lambda w: ([_hard("etc/app/flag", str(w.canary)),
                     _file("etc/app/flag", b"overwritten\n")], _at("etc/app/flag", "a hard link")),
         "hard link to a file outside",
         "etc/app/flag hard-linked to the canary, then a file of that name"),
    Case("absolute-path",
         lambda w: ([_file(str(w.canary), b"overwritten\n")],
                    _at(str(w.canary), "it is an absolute path")),
         "absolute member name", "a file named /…/outside/canary"),
    Case("dot-dot", _one(_file("etc/../../outside/canary"), "it contains a '..' component"),
         "'..' in a member name", "a file named etc/../../outside/canary"),
    Case("char-device", _one(_node("dev/console", tarfile.CHRTYPE), "a device file"),
         "character device", "a device node 1:3 (/dev/null's numbers)"),
    Case("block-device", _one(_node("dev/sda", tarfile.BLKTYPE), "a device file"),
         "block device", "a block device node"),
    Case("fifo", _one(_node("run/pipe", tarfile.FIFOTYPE), "a FIFO"), "FIFO", "a FIFO member"),
    Case("unknown-type",
         _one((_info("etc/app/volume", b"V", 0o644), b""), "an unsupported member type"),
         "unknown member type", "a GNU volume header member ('V')"),
    Case("link-named-dot", _one(_link("etc/.", "../outside"), "a link to ../outside, outside"),
         "link named with a '.' component", "etc/. -> ../outside (a link at etc)"),
    Case("empty-link-target", _one(_link("etc/app/l", ""), "a link with an empty target"),
         "link with no target", "a symlink with an empty target"),
    Case("dot-dot-in-absolute-link",
         _one(_link("etc/l", "/etc/../../outside"), "a link to /etc/../../outside ('..'"),
         "'..' in an absolute link target", "etc/l -> /etc/../../outside"),
    Case("twice",
         lambda w: ([_file("etc/app/x"), _file("etc/app/x", b"second\n")],
                    _at("etc/app/x", "it appears twice")),
         "a file twice", "etc/app/x, then etc/app/x again"),
    Case("through-a-file",
         lambda w: ([_file("etc/app"), _file("etc/app/x")],
                    _at("etc/app/x", "its path goes through etc/app, which is no directory")),
         "member below a file", "etc/app a file, then etc/app/x"),
    Case("nul-in-name", _one(_pax(_file("etc/app/a\0b")), "it contains a NUL byte"),
         "NUL byte in a member name", "a pax path holding a NUL byte", ONE_LINE),
    Case("nul-in-link",
         _one(_pax(_link("etc/l", "x\0y")), "a link whose target contains a NUL byte"),
         "NUL byte in a link target", "a pax linkpath holding a NUL byte", ONE_LINE),
    Case("uid-out-of-range", _one(_file("etc/app/x", uid=2**40, uname=""), "its owner"),
         "impossible owner id", "a pax uid of 2**40", ONE_LINE),
    Case("mtime-nan",
         _one(_file("etc/app/x", pax_headers={"mtime": "nan"}), "its modification time"),
         "impossible modification time", "a pax mtime of NaN", ONE_LINE),
    Case("mtime-huge",
         _one(_file("etc/app/x", pax_headers={"mtime": "1e300"}), "its modification time"),
         "modification time beyond time_t", "a pax mtime of 1e300", ONE_LINE),
]


@pytest.mark.parametrize("build", _params(CVE_CASES + REFUSALS, "safetar unpacking"))
def test_unsafe_archive_is_refused_and_nothing_outside_changes(tmp_path: Path,
                                                               build: Build) -> None:
    where = Where(tmp_path)
    _place_canary(where)
    members, refusal = build(where)
    before = _outside_state(where)

    with pytest.raises(safetar.UnsafeMember) as caught:
        _unpack(_archive(members), where.target)

    line = caught.value.one_line()
    assert "\n" not in line
    assert refusal in line and "nothing was restored" in line
    assert not any(where.target.iterdir())
    assert _outside_state(where) == before
    _canary_untouched(where)


# -- modes ----------------------------------------------------------------------------------------


def _mode(case_id: str, member: Member, restored: int, case: str = "") -> pytest.ParameterSet:
    """A member and the mode it must be restored with; `case` makes it a reliability case."""
    marks = [pytest.mark.reliability(
        f"safetar unpacking, {case}", fault=f"a {member[0].mode:o} member",
        expected=f"restored {restored:04o}, content and owner kept: no set-id or shared-write "
                 "file")] if case else []
    return pytest.param(member, restored, id=case_id, marks=marks)


@pytest.mark.parametrize(("member", "restored"), [
    _mode("setuid-root", _file("usr/local/bin/helper", b"#!/bin/sh\nid\n", mode=0o4755,
                               uname="root"), 0o755, "setuid-root file"),
    _mode("setgid-world-writable", _file("etc/app/shared.conf", mode=0o2777, gname="root"),
          0o755, "setgid world-writable file"),
    _mode("setuid-setgid", _file("etc/app/both", mode=0o6775, uname=OS_USER), 0o755,
          "setuid+setgid file of another user"),
    _mode("sticky-world-writable-dir", _dir("var/spool/drop", mode=0o1777), 0o755,
          "sticky world-writable directory"),
    _mode("setgid-dir", _dir("srv/shared", mode=0o2775, gname="root"), 0o755,
          "setgid group-writable directory"),
    _mode("private-file-kept", _file("etc/app/key", mode=0o400), 0o400),
    _mode("private-dir-kept", _dir("etc/ssl/private", mode=0o700), 0o700),
    _mode("group-readable-kept", _file("etc/app/app.conf", mode=0o640), 0o640),
])
def test_modes_lose_setid_sticky_and_shared_write_bits(tmp_path: Path, member: Member,
                                                       restored: int) -> None:
    info, data = member
    target = tmp_path / "t"
    counts = _unpack(_archive([member]), target)

    path = target / info.name
    st = path.lstat()
    assert stat.S_IMODE(st.st_mode) == restored
    assert counts.narrowed == ([info.name] if restored != info.mode else [])
    if info.isreg():
        assert path.read_bytes() == data
    if AS_ROOT:
        owner = pwd.getpwnam(info.uname).pw_uid if info.uname else 0
        assert st.st_uid == owner
    assert not any(p.lstat().st_mode & safetar.DROPPED_MODE_BITS for p in target.rglob("*"))


# -- end to end: `markship files restore` of a planted capture ------------------------------------


@pytest.mark.parametrize("build", _params(CVE_CASES + [c for c in REFUSALS if c.id in (
    "hard-link-out", "symlink-out", "nul-in-name", "uid-out-of-range")], "files restore as root"))
def test_files_restore_refuses_a_planted_capture(workdir: Path, build: Build) -> None:
    config, _tree = portal_fileset(workdir)
    where = Where(workdir)
    _place_canary(where)
    members, refusal = build(where)
    capture_id = plant_capture(workdir, members)
    before = _outside_state(where)

    proc = run_markship(config, "files", "restore", "--set", "portal", "--id", capture_id,
                        "--target-dir", str(where.target))

    line = refused_line(proc)
    assert refusal in line and "nothing was restored" in line
    assert not any(where.target.iterdir())
    assert _outside_state(where) == before
    _canary_untouched(where)


@pytest.mark.reliability(
    "files restore as root, planted setuid-root and setgid world-writable members",
    fault="a capture holding a 4755 root file, a 2777 file, a 1777 directory",
    expected="restore succeeds; every one restored 0755, owners and content kept")
def test_files_restore_as_root_makes_no_setid_file(workdir: Path) -> None:
    if not AS_ROOT:
        pytest.skip("needs root (owners are only restored by root)")
    config, _tree = portal_fileset(workdir)
    capture_id = plant_capture(workdir, [
        _dir("etc/portal", mode=0o755, uname="root"),
        _file("etc/portal/helper", b"#!/bin/sh\nid\n", mode=0o4755, uname="root", gname="root"),
        _file("etc/portal/shared.conf", mode=0o2777, uname="root", gname="root"),
        _dir("etc/portal/drop", mode=0o1777, uname="root"),
        _file("etc/portal/app.conf", mode=0o640, uname=OS_USER)])
    target = workdir / "t"

    said = markship_ok(config, "files", "restore", "--set", "portal", "--id", capture_id,
               "--target-dir", str(target))
    assert "3 restored without set-id, sticky or group/other write bits" in said, said

    restored = target / "etc" / "portal"
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in restored.iterdir()}
    assert modes == {"helper": 0o755, "shared.conf": 0o755, "drop": 0o755, "app.conf": 0o640}
    assert (restored / "helper").owner() == "root"
    assert (restored / "helper").read_bytes() == b"#!/bin/sh\nid\n"
    assert (restored / "app.conf").owner() == OS_USER
