"""One seglab writer per folder: an OS lock on FOLDER/.seglab.lock, and the stale temporaries a killed writer left.

`FolderLock` is `fcntl.flock` on a file in the folder: the kernel drops it when the holding
process exits, even by kill -9, so a dead writer never leaves the folder locked. The file records
the holder (process, host, command) for the one line the next writer is refused with. Training
keeps the file in its run folder; prediction removes it when done (safely: a writer that locked a
file already unlinked retries on the new one).

Every seglab temporary file is named `.NAME.PID[.RANDOM].tmp[.EXT]` (data.writing.atomic_output,
checkpoints, exports); `remove_stale_temporaries` deletes those whose process is gone.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from datetime import datetime
from pathlib import Path

from seglab.errors import SeglabError

LOCK_FILE = ".seglab.lock"
TEMPORARY_NAME = re.compile(r"^\..+\.(?P<pid>\d+)(\.[A-Za-z0-9_]{1,32})?\.tmp(\.[A-Za-z0-9]{1,8})?$")


class FolderInUse(SeglabError):
    """Another process holds the folder's lock; `holder` says which (its process, host, command)."""

    def __init__(self, folder: Path, holder: str):
        super().__init__(f"'{folder}' is in use by {holder}")
        self.folder, self.holder = folder, holder


class FolderLock:
    """acquire() takes the lock of `folder` (made if missing) or raises FolderInUse; release() drops
    it, and with `remove` deletes the lock file too. OSError when the folder cannot be written."""

    def __init__(self, folder: Path, remove: bool = False):
        self.folder, self.remove = Path(folder), remove
        self._descriptor: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(descriptor, 4096).decode(errors="replace").strip() or "another process"
                os.close(descriptor)
                raise FolderInUse(self.folder, holder) from None
            if _same_file(descriptor, path):  # not unlinked by the holder we waited for
                break
            os.close(descriptor)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv[:3])}, "
                             f"since {datetime.now():%Y-%m-%d %H:%M:%S})\n".encode())
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is None:
            return
        if self.remove:
            (self.folder / LOCK_FILE).unlink(missing_ok=True)  # while still holding it
        os.close(self._descriptor)  # closing drops the flock
        self._descriptor = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.fstat(descriptor).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[str]:
    """Delete seglab's temporary files in `folder` (only those of the file `name`, if given) whose
    writing process no longer runs on this machine (a kill -9 mid-write); the names removed. Other
    files are never touched."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY_NAME.match(entry.name)
        if not match or not entry.is_file(follow_symlinks=False) or (name and not entry.name.startswith(f".{name}.")):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            continue
    return removed
