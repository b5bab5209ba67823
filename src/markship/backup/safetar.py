"""Unpacking a tar stream that may have been tampered with, below one directory.

Each member is checked before anything is written for it: absolute names, `..` components,
hard links, devices, FIFOs, a path through a symlink and a relative link leading out of the
target directory are refused. Directories are entered with O_NOFOLLOW relative to their
parent's descriptor and files created with O_EXCL, so nothing is ever written through a link,
whatever the archive holds. Modes lose the setuid, setgid and sticky bits and write for group
and others (restored_mode()): no archive makes a restore as root yield a set-id program or a
file other users may change. markship's archives name a host's files by their absolute paths
(without the leading "/"), so an absolute link target is rewritten as the relative link to the
same path inside the target directory: restored into `/` it means what it meant, restored
anywhere else it stays inside.

(Python 3.11's `tarfile.data_filter` checks links with realpath() one member at a time, which
an archive can defeat by ordering its links; these rules do not depend on the order.)
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from markship.errors import RestoreError

CHUNK = 1 << 20

# Bits no restored member gets, whatever the archive says (what Python's tarfile "data" filter
# drops too). A capture may have been planted by the repository's OS user: set-id bits would
# make a restore run as root hand it a root program, and group or other write would let other
# users change restored files before the operator puts them in place.
DROPPED_MODE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH
# chown() takes (uid_t)-1 as "leave unchanged", so the largest id it can set is one less.
MAX_ID = 2**32 - 2
# Modification times beyond this (about 35,000 years either side of 1970) are not a real
# file's; beyond time_t they would fail in utime() rather than be refused.
MAX_SECONDS = 2**40


class UnsafeMember(RestoreError):
    """An archive member that could write outside the target, or a kind markship never
    writes (so the archive was altered)."""


def member_parts(name: str) -> list[str]:
    """The path components of a member name.

    Raises ValueError saying why for an absolute name, a `..` component, an empty name or a
    NUL byte (which no file name can hold).
    """
    if "\0" in name:
        raise ValueError("it contains a NUL byte")
    if name.startswith("/"):
        raise ValueError("it is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("it contains a '..' component")
    if not parts:
        raise ValueError("it names no path")
    return parts


def link_escapes(parts: list[str], target: str) -> bool:
    """Whether a link at `parts` to the relative `target` leads out of the target directory.

    Only leading `..` components are accepted, at most as many as the link's directory is
    deep: that directory is a real one (nothing is placed through a link), so climbing from it
    stays inside. A `..` after a descent is refused, since the descent may pass through another
    link and climb from wherever that leads. An absolute target always escapes (Placer
    rewrites them first, see relative_target()).
    """
    if target.startswith("/"):
        return True
    steps = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(steps) and steps[ups] == "..":
        ups += 1
    return ".." in steps[ups:] or ups > len(parts) - 1


def relative_target(parts: list[str], target: str) -> str:
    """The link target for a link at `parts`: an absolute target becomes the relative path to
    the same place inside the target directory; a relative one is left as it is."""
    if not target.startswith("/"):
        return target
    inside = [p for p in target.split("/") if p not in ("", ".")]
    start = parts[:-1]
    common = 0
    while common < min(len(start), len(inside)) and start[common] == inside[common]:
        common += 1
    steps = [".."] * (len(start) - common) + inside[common:]
    return "/".join(steps) or "."


def restored_mode(mode: int) -> int:
    """The permission bits a file or directory is restored with: the member's, less
    DROPPED_MODE_BITS (so at most 0755)."""
    return mode & 0o7777 & ~DROPPED_MODE_BITS


def member_owner_and_time(member: tarfile.TarInfo) -> tuple[int, int, int]:
    """The owner (by name where the names exist on this host, else by number) and the
    modification time (whole seconds) a member is restored with.

    Raises ValueError saying why for an id chown() cannot set or a time no file has.
    """
    uid, gid = member.uid, member.gid
    if member.uname:
        with contextlib.suppress(KeyError):
            uid = pwd.getpwnam(member.uname).pw_uid
    if member.gname:
        with contextlib.suppress(KeyError):
            gid = grp.getgrnam(member.gname).gr_gid
    if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
        raise ValueError(f"its owner {uid}:{gid} is no valid user and group id")
    if not -MAX_SECONDS < member.mtime < MAX_SECONDS:  # False for NaN too
        raise ValueError(f"its modification time {member.mtime} is out of range")
    return uid, gid, int(member.mtime)


def open_target(target_dir: Path) -> int:
    """A descriptor of `target_dir`, created (mode 0700) when missing.

    Raises RestoreError when it is not an empty directory, or cannot be created.
    """
    try:
        if target_dir.exists():
            if not target_dir.is_dir():
                raise RestoreError(f"target {target_dir} is not a directory",
                                   "choose a new or empty directory")
            if any(target_dir.iterdir()):
                raise RestoreError(f"target directory {target_dir} is not empty",
                                   "choose a new or empty directory; markship never "
                                   "overwrites files")
        else:
            target_dir.mkdir(mode=0o700, parents=True)
        return os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"cannot use {target_dir} as the target ({exc.strerror})",
                           "choose a directory this user may create and write") from None


def empty(directory: Path) -> None:
    """Remove what an unpacking wrote (links are removed, never followed)."""
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()


@dataclass
class Counts:
    files: int = 0
    dirs: int = 0
    links: int = 0
    total_bytes: int = 0
    # members whose mode lost bits (restored_mode()), for the caller to report
    narrowed: list[str] = field(default_factory=list)


@dataclass
class _Attrs:
    """What a file or directory is given once written: `mode` is already restored_mode()."""

    parts: list[str]
    uid: int
    gid: int
    mode: int
    mtime: int


@dataclass
class Placer:
    """Places members below the directory `root_fd`; `what` names the archive in errors.

    Owners are restored when running as root (by user and group name where they exist on this
    host, else by number), elsewhere only where the system permits; modes without the bits of
    DROPPED_MODE_BITS. Errors say "nothing was restored": the caller empties the target on any
    failure (see empty()).
    """

    root_fd: int
    what: str
    counts: Counts = field(default_factory=Counts)
    _dirs: list[_Attrs] = field(default_factory=list)
    _as_root: bool = field(default_factory=lambda: os.geteuid() == 0)

    def place(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        """Check one member, then write it. Raises UnsafeMember naming a refused member."""
        name = member.name
        try:
            parts = member_parts(name)
            uid, gid, mtime = member_owner_and_time(member)
        except ValueError as exc:
            raise self._unsafe(name, str(exc)) from None
        if member.issym():
            if not member.linkname:
                raise self._unsafe(name, "a link with an empty target")
            if "\0" in member.linkname:
                raise self._unsafe(name, "a link whose target contains a NUL byte")
            if ".." in member.linkname.split("/") and member.linkname.startswith("/"):
                raise self._unsafe(name, f"a link to {member.linkname} ('..' in an absolute "
                                         "target)")
            member.linkname = relative_target(parts, member.linkname)
            if link_escapes(parts, member.linkname):
                raise self._unsafe(name, f"a link to {member.linkname}, outside the target "
                                         "directory")
        elif member.islnk():
            raise self._unsafe(name, "a hard link")
        elif member.ischr() or member.isblk():
            raise self._unsafe(name, "a device file")
        elif member.isfifo():
            raise self._unsafe(name, "a FIFO")
        elif member.issparse() or not (member.isreg() or member.isdir()):
            raise self._unsafe(name, "an unsupported member type")
        attrs = _Attrs(parts, uid, gid, restored_mode(member.mode), mtime)
        try:
            parent = self._enter(parts[:-1], name, create=True)
            try:
                self._write(parent, attrs, member, tar)
            finally:
                os.close(parent)
        except FileExistsError:
            raise self._unsafe(name, "it appears twice in the archive") from None
        except OSError as exc:
            raise self._cannot_write(parts, exc) from None

    def finish(self) -> None:
        """Directory owners, modes and mtimes, deepest first (after their content)."""
        for attrs in sorted(self._dirs, key=lambda a: len(a.parts), reverse=True):
            try:
                fd = self._enter(attrs.parts, "/".join(attrs.parts), create=False)
                try:
                    self._settle(fd, attrs)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise self._cannot_write(attrs.parts, exc) from None

    def _write(self, parent: int, attrs: _Attrs, member: tarfile.TarInfo,
               tar: tarfile.TarFile) -> None:
        leaf = attrs.parts[-1]
        if attrs.mode != member.mode & 0o7777 and not member.issym():
            self.counts.narrowed.append(member.name)
        if member.isdir():
            with contextlib.suppress(FileExistsError):
                os.mkdir(leaf, 0o755, dir_fd=parent)  # its mode is set by finish()
            os.close(self._enter(attrs.parts, member.name, create=False))
            self._dirs.append(attrs)
            self.counts.dirs += 1
        elif member.issym():  # a link has no mode of its own on Linux
            os.symlink(member.linkname, leaf, dir_fd=parent)
            self._chown(lambda: os.chown(leaf, attrs.uid, attrs.gid, dir_fd=parent,
                                         follow_symlinks=False))
            os.utime(leaf, (attrs.mtime, attrs.mtime), dir_fd=parent, follow_symlinks=False)
            self.counts.links += 1
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(leaf, flags, 0o600, dir_fd=parent)
            try:
                source = tar.extractfile(member)
                if source is not None:
                    self.counts.total_bytes += _copy(source, fd)
                self._settle(fd, attrs)
            finally:
                os.close(fd)
            self.counts.files += 1

    def _settle(self, fd: int, attrs: _Attrs) -> None:
        """Owner, then mode, then mtime of the open file or directory `fd`.

        The mode is set last of the two so that it is exactly `attrs.mode` whatever chown()
        does to set-id bits; it is already narrowed, so no order of these calls can leave a
        set-id file owned by root, even for the moment between them.
        """
        self._chown(lambda: os.fchown(fd, attrs.uid, attrs.gid))
        os.fchmod(fd, attrs.mode)
        os.utime(fd, (attrs.mtime, attrs.mtime))

    def _enter(self, parts: list[str], name: str, *, create: bool) -> int:
        """A descriptor of the directory `parts` below the target; refuses to pass a link."""
        fd = os.dup(self.root_fd)
        try:
            for depth, part in enumerate(parts, 1):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    is_link = stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode)
                    passed = "/".join(parts[:depth])
                    what = "a symlink" if is_link else "no directory"
                    raise self._unsafe(name, f"its path goes through {passed}, which is {what}"
                                       ) from None
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _chown(self, call: Callable[[], None]) -> None:
        try:
            call()
        except PermissionError:
            if self._as_root:
                raise

    def _unsafe(self, name: str, why: str) -> UnsafeMember:
        return UnsafeMember(
            f"{self.what} holds an unsafe member {name!r} ({why}); nothing was restored",
            "markship never writes such members: the archive was altered or not made by "
            "markship")

    def _cannot_write(self, parts: list[str], exc: OSError) -> RestoreError:
        return RestoreError(f"cannot write {'/'.join(parts)} ({exc.strerror}); nothing was "
                            "restored", "check the target directory's space and permissions")


def _copy(source: IO[bytes], fd: int) -> int:
    total = 0
    while chunk := source.read(CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        total += len(chunk)
    return total
