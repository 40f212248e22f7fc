"""The ISBI 2012 slices bundled with seglab: where they are on this machine.

A checkout keeps them at data/isbi2012; a wheel carries them inside the package, beside this
module (setup.py copies them there at build time).
"""
from __future__ import annotations

import os
from pathlib import Path

from seglab.errors import SeglabError


def locate_isbi() -> Path:
    """The bundled data: $SEGLAB_DATA, ./data/isbi2012, the installed package's copy, or data/isbi2012
    of the source checkout."""
    here = Path(__file__).resolve()
    candidates = [Path(os.environ["SEGLAB_DATA"])] if os.environ.get("SEGLAB_DATA") else []
    candidates += [Path.cwd() / "data" / "isbi2012", here.parent / "isbi2012", here.parents[3] / "data" / "isbi2012"]
    for candidate in candidates:
        if (candidate / "train" / "images").is_dir():
            return candidate
    raise SeglabError("the bundled ISBI 2012 data was not found: reinstall seglab from its wheel, run the "
                      "demo from the seglab checkout, or set SEGLAB_DATA to the isbi2012 folder")
