"""The run folder's files: see :mod:`neuralode.files` (kept here for imports of earlier
versions)."""

from ..files import (
    RunFolderBusy,
    RunLock,
    atomic_write,
    check_folder,
    remove_stale_temporaries,
    write_csv,
    write_json,
)

__all__ = [
    "RunFolderBusy",
    "RunLock",
    "atomic_write",
    "check_folder",
    "remove_stale_temporaries",
    "write_csv",
    "write_json",
]
