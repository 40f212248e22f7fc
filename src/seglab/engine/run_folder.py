"""Where a run's files go: the default run-folder name, and whether torchrun restarted this job."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from seglab.config import RunConfig


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
