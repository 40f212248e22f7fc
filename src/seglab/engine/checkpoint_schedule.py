"""When best.pt and last.pt reach the disk: at the first metrics row, then at most every `interval`
seconds of wall time, and at the end of the run.

A paper-sized U-Net's last.pt is 355 MB and takes about a second to write and fsync; on a GPU an
ISBI epoch trains in 0.15 s, so writing at every metrics row would spend most of a run on the disk.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from seglab.errors import SeglabError
from seglab.runtime.checkpoint import save_checkpoint
from seglab.runtime.run_files import resume_hint, write_best_images


class CheckpointSchedule:
    """Rank 0's checkpoint writes (`enabled` False on the other ranks: every call does nothing)."""

    def __init__(self, run_dir: Path, interval: float, enabled: bool):
        self.run_dir, self.interval, self.enabled = run_dir, interval, enabled
        self._best: dict | None = None  # a best.pt payload, its weights copied when they were the best
        self._best_images: list[dict] | None = None  # its validation's rows, image by image
        self._last: Callable[[], dict] | None = None  # builds last.pt from the current training state
        self._written: float | None = None  # monotonic() of the last write of last.pt
        self._rows_written = False  # a metrics row's best.pt/last.pt reached the disk in this process
        self.saved: Callable[[Path], None] | None = None  # told each file written (the callbacks' on_checkpoint)

    def hold_best(self, payload: dict, images: list[dict] | None = None) -> None:
        """The best weights so far (already copied off the model), written at the next write, with
        the rows of the validation that scored them (best_images.json), when it scored them."""
        if self.enabled:
            self._best, self._best_images = payload, images

    def period_closed(self, build_last: Callable[[], dict]) -> None:
        """A metrics row closed: last.pt would now be `build_last()`. Writes both if due."""
        if not self.enabled:
            return
        self._last = build_last
        # The first row always writes, whatever --save-every wrote before it: best.pt exists from
        # the first metrics row on, and commands that take `-m RUN/best.pt` find it.
        if not self._rows_written or time.monotonic() - self._written >= self.interval:
            self.flush()
            self._rows_written = True

    def write_last(self, payload: dict) -> None:
        """Write last.pt now (`--save-every` steps, mid-epoch)."""
        if self.enabled:
            self._save(payload, "last.pt")
            self._last, self._written = None, time.monotonic()

    def flush(self) -> None:
        """Write whatever is pending; at the end of a run, right after its last period closed."""
        if not self.enabled:
            return
        if self._best is not None:
            self._save(self._best, "best.pt")
            if self._best_images is not None:
                write_best_images(self.run_dir, self._best["step"], self._best_images)
            self._best = self._best_images = None
        if self._last is not None:
            self.write_last(self._last())

    def resume_hint(self, how: str = "") -> str:
        return resume_hint(self.run_dir, how)

    def _save(self, payload: dict, name: str) -> None:
        try:
            save_checkpoint(payload, self.run_dir / name)
        except SeglabError as error:
            raise SeglabError(f"{error}: free space or choose another --out, then {self.resume_hint()}") from None
        if self.saved is not None:
            self.saved(self.run_dir / name)
