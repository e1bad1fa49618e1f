"""Files neuralode writes: atomic writes (a file is written under a temporary name and renamed
over the target, so a reader or a resumed run never sees half a file, and a symbolic link at
the target is replaced, never followed), the cleanup of temporary files a killed process left
behind, and the exclusive lock of a run folder. The lowest layer of the package: training,
plotting and the experiments write through it."""

from __future__ import annotations

import csv
import datetime
import errno
import io
import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import InvalidArgumentError, RunFolderBusy

__all__ = [
    "RunFolderBusy",
    "RunLock",
    "atomic_write",
    "check_folder",
    "remove_stale_temporaries",
    "write_csv",
    "write_json",
]

_TMP_SUFFIX = ".tmp"  # temporaries are named .NAME.XXXXXX.tmp beside their target


def atomic_write(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``writer(fh)`` atomically: all of it or, on any failure, nothing
    (the previous version stays). A full disk or a file-size limit is an ``OSError`` that says
    so and names the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        raise _explain_write_error(err, path) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _explain_write_error(err: OSError, path: Path) -> OSError:
    kept = "the previous version is kept" if path.exists() else "nothing was written"
    if err.errno == errno.ENOSPC:
        why = "no space left on device"
        fix = "free some space and run the command again (train: with --resume)"
    elif err.errno == errno.EFBIG:
        why = "the file-size limit was exceeded (see `ulimit -f`)"
        fix = "raise the limit and run the command again (train: with --resume)"
    elif err.errno == errno.EDQUOT:
        why = "the disk quota is exceeded"
        fix = "free some space and run the command again (train: with --resume)"
    else:
        return err
    return OSError(err.errno, f"{why} while writing {path}; {kept}. {fix}")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files of atomic writes that a killed process left in ``folder``
    (call it only while holding the folder's :class:`RunLock`); return their names."""
    removed: list[str] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)


def check_folder(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """``path`` as a folder that is or can be created: a clear ``ValueError`` when it (or a
    parent) is a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"is under {p}, which is a file"
                raise InvalidArgumentError(f"{what} {path} {where}; it must be a folder")
            break
    return path


class RunLock:
    """An exclusive lock on a run folder, held for as long as a process writes it.

    The lock is an OS-level lock (``flock``) on ``FOLDER/.lock``: the operating system releases it
    when the process ends in any way, so a killed run never leaves a stale lock behind. The file
    records who holds it, for the message a second process gets.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():  # never write through a link (it may point at a user's file)
            raise InvalidArgumentError(
                f"{self.path} is a symbolic link; neuralode never writes through links in a run "
                "folder. Remove the link (it holds no state), or choose another --out"
            )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:  # a link made between the check and the open
                raise InvalidArgumentError(
                    f"{self.path} is a symbolic link; neuralode never writes through links in "
                    "a run folder. Remove the link, or choose another --out"
                ) from None
            raise
        try:
            _lock_fd(fd)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusy(
                f"{self.folder} is in use by another neuralode process ({holder}); wait for it "
                "to finish, or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = (
            f"pid {os.getpid()} on {socket.gethostname()}, since "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}"
        )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, info.encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _lock_fd(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path``, atomically (values JSON cannot hold as
    strings)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode()))


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts; the columns are every key, in order of first appearance) as CSV to
    ``path``, atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))
