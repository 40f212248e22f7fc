"""A run folder: its default name, whether torchrun restarted the job, and the lock one run holds on it."""
from __future__ import annotations

import errno
import os
from datetime import datetime
from pathlib import Path

from seglab.config import RunConfig
from seglab.data.folder_lock import FolderInUse, FolderLock, remove_stale_temporaries
from seglab.engine import distributed
from seglab.errors import SeglabError


def default_run_dir(config: RunConfig) -> Path:
    """runs/<data>-<model>-<time>; under torchrun the elastic run id replaces the time, so a
    restarted job finds its own folder again."""
    if config.out:
        return Path(config.out)
    tag = os.environ.get("TORCHELASTIC_RUN_ID")
    if not tag or tag == "none":
        tag = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(config.data.root).resolve().name}-{config.model.name}-{tag}"


def restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


class RunFolderLock:
    """An OS-level lock on a run folder, held by one run at a time (rank 0 of a torchrun job).

    A `data.folder_lock.FolderLock` on RUN_DIR/.seglab.lock: the kernel releases it when the holding
    process exits, even by kill -9, so a dead run never leaves the folder locked; a restarted
    torchrun job finds it free. The file records the holder's process id and command for the
    message of the next run that finds it taken.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._handle = None

    @classmethod
    def for_job(cls, run_dir: Path, is_main: bool) -> "RunFolderLock":
        """The lock of a (torchrun) job: rank 0, the only writer, takes it; if it cannot, every
        rank stops with rank 0's one line."""
        lock, problem = cls(run_dir), None
        if is_main:
            try:
                lock.acquire()
            except SeglabError as error:
                problem = str(error)
        problem = distributed.broadcast_object(problem)
        if problem:
            raise SeglabError(problem)
        return lock

    def acquire(self) -> None:
        """Create the folder if needed and take the lock, or raise SeglabError naming the holder.
        Temporary files of a run killed mid-write are removed then."""
        prepare_run_folder(self.run_dir)
        lock = FolderLock(self.run_dir)
        try:
            lock.acquire()
        except FolderInUse as error:
            raise SeglabError(f"run folder '{self.run_dir}' is in use by {error.holder}: wait for that run to "
                              "finish, or choose another --out") from None
        remove_stale_temporaries(self.run_dir)
        self._handle = lock

    def release(self) -> None:
        if self._handle is not None:
            self._handle.release()
            self._handle = None


def prepare_run_folder(run_dir: Path) -> None:
    """Make the run folder, or raise SeglabError when it cannot be one (a file, under a file,
    read-only, not permitted)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SeglabError(f"--out '{run_dir}' is a file, not a folder: choose another --out")
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise SeglabError(f"--out '{run_dir}' is under '{parent}', which is a file: choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.ENOSPC: "the disk is full"}.get(error.errno, error.strerror or str(error))
        raise SeglabError(f"cannot write the run folder '{run_dir}' ({reason}): choose another --out") from None
