"""This machine's pip settings for a container build: one pip.conf, and the local paths it names.

`python3 scripts/pip_settings.py OUT_DIR MOUNT_ROOT` writes OUT_DIR/pip.conf (pip's merged
settings: the config files and the PIP_* variables, the variables winning as in pip) and prints a
podman volume `HOST_PATH:MOUNT_ROOT/HOST_PATH:ro` a line for every existing file or folder the
settings name (find-links folders, the folders of file:// indexes, a constraints file, a
certificate bundle); pip.conf names them at MOUNT_ROOT. scripts/container_test.sh mounts all of it
for the build's RUN steps, so the Dockerfile itself holds nothing of this machine. Mounting under a
root of their own, not at the same paths, leaves the image's own files alone (a read-only
/etc/ssl/certs/ca-certificates.crt breaks the ca-certificates package's install).
"""
from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
from pathlib import Path

INDEX_OPTIONS = ("index-url", "extra-index-url")


def pip_settings() -> dict[str, dict[str, str]]:
    """{section: {option: value}} as `pip config list` reports them; ':env:' (PIP_*) goes to [global]."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    entries = []
    for line in listing.splitlines():
        key, _, quoted = line.partition("=")
        section, _, name = key.rpartition(".")
        entries.append((section, name, ast.literal_eval(quoted)))
    settings: dict[str, dict[str, str]] = {}
    for section, name, value in sorted(entries, key=lambda entry: entry[0] == ":env:"):  # variables last
        settings.setdefault("global" if section == ":env:" else section, {})[name] = value
    return settings


def local_path(name: str, token: str) -> str | None:
    """The existing local path a value names (plain or file://), or None. A local index (.../simple)
    counts with its parent folder: its pages link to files beside it (../../files/...)."""
    path = token.removeprefix("file://").rstrip("/")
    if not path.startswith("/") or not os.path.exists(path):
        return None
    return os.path.dirname(path) if name in INDEX_OPTIONS else path


def relocate(settings: dict[str, dict[str, str]], mount_root: str) -> tuple[dict[str, dict[str, str]], set[str]]:
    """The settings with every local path moved under mount_root, and the host paths to mount."""
    mounts: set[str] = set()
    moved: dict[str, dict[str, str]] = {}
    for section, options in settings.items():
        for name, value in options.items():
            tokens = []
            for token in value.split():
                path = local_path(name, token)
                if path is not None:
                    mounts.add(path)
                    token = token.replace(path, mount_root + path, 1)
                tokens.append(token)
            moved.setdefault(section, {})[name] = " ".join(tokens)
    return moved, mounts


def main(out_dir: str, mount_root: str) -> None:
    settings, mounts = relocate(pip_settings(), mount_root.rstrip("/"))
    config = configparser.ConfigParser(interpolation=None)
    config.read_dict(settings)
    with open(Path(out_dir) / "pip.conf", "w") as handle:
        config.write(handle)
    for path in sorted(mounts):
        print(f"{path}:{mount_root.rstrip('/')}{path}:ro")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
