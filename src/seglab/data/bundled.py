"""The ISBI 2012 slices bundled with seglab: where they are on this machine."""
from __future__ import annotations

import os
from pathlib import Path

from seglab.errors import SeglabError


def locate_isbi() -> Path:
    """The bundled data: $SEGLAB_DATA, ./data/isbi2012, or data/isbi2012 of the source checkout."""
    candidates = [Path(os.environ["SEGLAB_DATA"])] if os.environ.get("SEGLAB_DATA") else []
    candidates += [Path.cwd() / "data" / "isbi2012", Path(__file__).resolve().parents[3] / "data" / "isbi2012"]
    for candidate in candidates:
        if (candidate / "train" / "images").is_dir():
            return candidate
    raise SeglabError("the bundled ISBI 2012 data was not found: run the demo from the seglab checkout "
                      "or set SEGLAB_DATA to the isbi2012 folder")
