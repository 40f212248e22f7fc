"""Progress bars: one tqdm bar on stderr, drawn where someone watches it (a TTY) unless a caller decides.

`seglab train` draws its bar whenever progress is on (`--no-progress` turns it off); `seglab
evaluate` and `seglab predict` over folders draw theirs only on a terminal, so logs and pipes get
plain lines; the check of a folder and the decoding of its training images draw one past a second.
tqdm.auto draws a widget in Jupyter.
"""
from __future__ import annotations

import sys


def progress_bar(total: float, desc: str, unit: str, enabled: bool | None = None, leave: bool = True, **options):
    """A tqdm bar of `total` `unit`s; `enabled` None: only when stderr is a terminal. `leave`: the
    finished bar stays on the screen (a training epoch's does not)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled is None else not enabled,
                leave=leave, file=sys.stderr, dynamic_ncols=True, **options)


def progress_iter(items: list, desc: str, unit: str = "file", enabled: bool | None = None, delay: float = 1.0):
    """The items, one by one, with a bar (on a terminal, `enabled` None) that shows itself only once
    they have taken more than `delay` seconds: a large folder's check says how far it is, a small
    one's prints nothing more."""
    with progress_bar(len(items), desc, unit, enabled, leave=False, delay=delay) as bar:
        for item in items:
            yield item
            bar.update(1)
