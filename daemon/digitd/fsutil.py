"""Filesystem primitives the daemon's guarantees rest on: renames that never overwrite,
atomic writes, moves that survive crossing filesystems, and reading a dropped file safely."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

from digitd.pngcheck import Rejected, read_header

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


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may take fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to `path` through a temporary name and a rename: readers never see half.

    With `durable`, the data is fsynced before the rename (and survives a power cut).
    Replaces an existing file of the same name.
    """
    tmp = path.with_name(temporary_name())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
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


def max_file_bytes(max_pixels: int) -> int:
    """No PNG within the pixel limit is bigger than this (16-bit RGBA stored uncompressed)."""
    return 8 * max_pixels + (1 << 20)


def read_input_file(path: str | os.PathLike, max_pixels: int) -> bytes:
    """The bytes of a dropped file, read safely; raises Rejected (missing, not_regular,
    unreadable, too_large, or the PNG header's own reasons) without reading what it refuses.

    lstat first, so a symlink, FIFO, socket, folder or device is never opened; then open
    without following links and non-blocking, and fstat again, in case the entry was swapped
    since. The PNG header is checked before the rest is read, so a file that declares too
    many pixels is not read further.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise Rejected("missing", "no such file") from None
    except OSError as exc:
        raise Rejected("unreadable", f"cannot be examined: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Rejected("not_regular", f"is a {_kind(st.st_mode)}, not a regular file: not read")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Rejected("missing", "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Rejected("not_regular", "is a symbolic link: not followed") from None
        raise Rejected("unreadable", f"cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected("not_regular", f"is a {_kind(st.st_mode)}, not a regular file: not read")
        if st.st_size > max_file_bytes(max_pixels):
            raise Rejected("too_large", f"{st.st_size:,} bytes is larger than any PNG allowed")
        head = os.read(fd, 33)
        if len(head) == 33:
            read_header(head, max_pixels)  # too_large, not_png: stop before reading more
        parts = [head]
        while chunk := os.read(fd, max(1 << 16, st.st_size)):
            parts.append(chunk)
        return b"".join(parts)
    except OSError as exc:
        raise Rejected("unreadable", f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"
