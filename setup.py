"""Build hook: the wheel carries the bundled ISBI 2012 slices as package data.

The data lives at data/isbi2012 in the checkout (the tests, the README and `seglab check
data/isbi2012` name that path), outside the package. Building a wheel copies it to
seglab/data/isbi2012 inside the package, where `seglab.data.bundled.locate_isbi` finds it, so
`seglab demo` works from an installed wheel. Everything else is declared in pyproject.toml.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = Path("data") / "isbi2012"
PACKAGE_TARGET = Path("seglab") / "data" / "isbi2012"


class BuildWithBundledData(build_py):
    """build_py, then data/isbi2012 copied under the built package (not for editable installs,
    which find the checkout's data/isbi2012 directly)."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        if not (BUNDLED / "train" / "images").is_dir():
            raise SystemExit(f"{BUNDLED} is missing: build from a seglab checkout or its sdist")
        for source in sorted(p for p in BUNDLED.rglob("*") if p.is_file()):
            target = Path(self.build_lib) / PACKAGE_TARGET / source.relative_to(BUNDLED)
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildWithBundledData})
