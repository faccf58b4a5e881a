"""Filesystem primitives the daemon's guarantees rest on: renames that never overwrite,
atomic writes, and moves that survive crossing filesystems."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename atomically, failing with FileExistsError if `dst` exists (never overwrites).

    Uses renameat2(RENAME_NOREPLACE); where the filesystem lacks it, link then unlink,
    which is also no-replace for regular files (a crash between leaves both names).
    """
    s, d = os.fsencode(src), os.fsencode(dst)
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, s, _AT_FDCWD, d, _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), os.fsdecode(src), None, os.fsdecode(dst))
    if os.path.lexists(d):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst))
    if os.path.isdir(s) and not os.path.islink(s):
        os.rename(s, d)  # directories cannot be hard-linked; the lexists check above guards
        return
    os.link(s, d, follow_symlinks=False)
    os.unlink(s)


def move_noreplace(src: Path, dst: Path) -> None:
    """Move a regular file to `dst` (never overwriting), copying when on another filesystem."""
    try:
        rename_noreplace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(temporary_name())
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    rename_noreplace(tmp, dst)
    os.unlink(src)


def write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to `path` through a temporary name and a rename: readers never see half.

    With `durable`, the data is fsynced before the rename (and survives a power cut).
    Replaces an existing file of the same name.
    """
    tmp = path.with_name(temporary_name())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


_TEMPORARY = re.compile(r"\.digitd-[0-9a-f]{12}\.tmp")


def temporary_name() -> str:
    """A short hidden name for a file being written: short, so that the final name may
    use all of NAME_MAX (255 bytes); hidden, so that the watcher never takes it."""
    return f".digitd-{secrets.token_hex(6)}.tmp"


def is_temporary_name(name: str) -> bool:
    """Is this one of `temporary_name()`'s names (left behind if a crash came mid-write)?"""
    return _TEMPORARY.fullmatch(name) is not None


def fsync_dir(path: Path) -> None:
    """Make the entries of a folder (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
