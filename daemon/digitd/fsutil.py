"""Generic filesystem primitives the daemon's guarantees rest on: renames that never
overwrite, atomic writes, moves that survive crossing filesystems. Nothing here knows what a
digitd file is (reading a dropped file: digitd.intake; the work folder: digitd.claims)."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable
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


def make_folder(path: Path) -> str | None:
    """`mkdir -p path`: None, or why it cannot be made (for a command's one-line error)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{path}: cannot create ({exc.strerror})"
    return None


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may take fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(
    path: Path, data: bytes | Callable[[Path], None], *, durable: bool = False
) -> None:
    """Write `path` through a temporary name beside it and a rename: readers never see half.

    `data` is the bytes, or a function that writes the temporary file given its path (a
    library's `save(path)`; the temporary name then ends with `path`'s suffix, which such
    savers check). With `durable`, the data is fsynced before the rename (and survives a
    power cut). Replaces an existing file of the same name. The one atomic write in digitd.
    """
    tmp = path.with_name(temporary_name(path.suffix if callable(data) else ""))
    try:
        if callable(data):
            data(tmp)
            if durable:
                _fsync_file(tmp)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                write_all(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_in_place(path: Path, data: bytes) -> None:
    """Create or truncate `path` and write `data`: no temporary name, no rename.

    For files that nothing reads before a later commit points at them (the previews, named
    in results.csv only once written); a crash mid-write is mended by the redo.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


_TEMPORARY = re.compile(r"\.digitd-[0-9a-f]{12}\.tmp(\.[^./]+)?")


def temporary_name(suffix: str = "") -> str:
    """A short hidden name for a file being written: short, so that the final name may
    use all of NAME_MAX (255 bytes); hidden, so that the watcher never takes it."""
    return f".digitd-{secrets.token_hex(6)}.tmp{suffix}"


def is_temporary_name(name: str) -> bool:
    """Is this one of `temporary_name()`'s names (left behind if a crash came mid-write)?"""
    return _TEMPORARY.fullmatch(name) is not None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
