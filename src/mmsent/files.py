"""Safe file writing: atomic replacement with the usual permissions, exclusive locks, early write checks."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO

from mmsent.errors import MmsentError


@lru_cache(maxsize=1)
def file_mode() -> int:
    """The mode a plain `open()` would give a new file (0o644 under the usual umask 022).

    mkstemp creates files 0600; a result a user writes must be readable as any other file they make.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temp file beside `path`; on success it replaces `path` in one rename, else it is removed.

    A reader sees the old file or the new one, never a half-written one, even if the process is killed.
    """
    path = Path(path)
    if path.is_dir():
        raise MmsentError(f"{path} is a folder; give a file path to write")
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", newline="") as handle:
        handle.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def describe_os_error(exc: OSError) -> str:
    """`path: reason`, for a message a user can act on."""
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


def ensure_writable_folder(folder: Path, what: str) -> Path:
    """Create `folder` if needed and prove a file can be written in it, before any long work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mmsent-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise MmsentError(f"cannot write {what}: {folder} exists and is not a folder") from None
    except OSError as exc:
        raise MmsentError(f"cannot write {what} in {folder} ({describe_os_error(exc)}); choose another place") from None
    return folder


def check_output_file(path: Path, what: str = "the output") -> Path:
    """Refuse, before any work, an output path that is a folder or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise MmsentError(f"{path} is a folder; give a file path for {what} (e.g. {path / 'out.txt'})")
    ensure_writable_folder(path.parent, what)
    return path


class LockHeld(MmsentError):
    """Another process holds the lock."""


class FileLock:
    """An exclusive OS lock (flock) on a small file; released when the process ends, even by kill -9."""

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as exc:
            raise MmsentError(f"cannot lock {self.what} ({describe_os_error(exc)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_small(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise LockHeld(
                f"another mmsent process{who} is writing {self.what}; wait for it to finish, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_small(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def remove_tree(path: Path) -> None:
    """Remove a folder we own (temp or replaced run); a missing one is fine."""
    shutil.rmtree(path, ignore_errors=True)
