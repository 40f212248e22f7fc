"""Kaggle's Carvana Image Masking Challenge: download with the `kaggle` package, unpack into seglab's
layout (DIR/images/xxx.jpg, DIR/masks/xxx_mask.gif), check the result."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from seglab.errors import SeglabError

COMPETITION = "carvana-image-masking-challenge"
TRAIN_ZIP, MASKS_ZIP = "train_hq.zip", "train_masks.zip"
RULES_URL = f"https://www.kaggle.com/competitions/{COMPETITION}/rules"
BY_HAND = (f"or download {TRAIN_ZIP} and {MASKS_ZIP} from https://www.kaggle.com/competitions/{COMPETITION}/data "
           "and pass --train-zip and --masks-zip")
GET_CREDENTIALS = ("create an API token at https://www.kaggle.com/settings (API: Create New Token), save it as "
                   "~/.kaggle/kaggle.json (chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY, accept the rules at "
                   f"{RULES_URL}, and rerun; {BY_HAND}")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".gif", ".png")


def kaggle_credentials() -> str | None:
    """Where the kaggle package will find credentials (as the package looks for them), or None."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    folders = [Path(os.environ["KAGGLE_CONFIG_DIR"])] if os.environ.get("KAGGLE_CONFIG_DIR") else []
    folders += [Path.home() / ".kaggle", config_home / "kaggle"]
    for folder in folders:
        for name in ("kaggle.json", "access_token", "access_token.txt"):
            if (folder / name).is_file():
                return str(folder / name)
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def download_carvana(folder: Path) -> tuple[Path, Path]:
    """Download train_hq.zip and train_masks.zip into `folder`; one-line SeglabError when it cannot."""
    if kaggle_credentials() is None:
        raise SeglabError(f"no Kaggle credentials: {GET_CREDENTIALS}")
    if importlib.util.find_spec("kaggle") is None:
        raise SeglabError(f"the kaggle package is not installed: pip install kaggle, then rerun; {BY_HAND}")
    # Importing the package logs in (printing warnings and a page of help, then exiting when it finds
    # no usable credentials), and its HTTP stack raises many error types: all become one line here.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        raise SeglabError(f"the kaggle package found no usable credentials: {GET_CREDENTIALS}") from None
    except ImportError as error:
        raise SeglabError(f"the kaggle package is installed but does not import ({_first_line(error)}): "
                          f"pip install --upgrade kaggle, then rerun; {BY_HAND}") from None
    except Exception as error:
        raise SeglabError(f"the kaggle package could not log in ({_first_line(error)}): {GET_CREDENTIALS}") from None
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (TRAIN_ZIP, MASKS_ZIP):
        try:
            api.competition_download_file(COMPETITION, name, path=str(folder), quiet=False)
        except Exception as error:
            reason = _first_line(error)
            if "403" in reason or "Forbidden" in reason:
                raise SeglabError(f"Kaggle refused {name} ({reason}): accept the competition rules at {RULES_URL} "
                                  f"while logged in, then rerun; {BY_HAND}") from None
            if "401" in reason or "Unauthorized" in reason:
                raise SeglabError(f"Kaggle rejected the credentials ({reason}): {GET_CREDENTIALS}") from None
            if any(word in reason for word in ("Connection", "Timeout", "NameResolution", "Max retries")):
                reason = "api.kaggle.com cannot be reached: offline, or a proxy or firewall blocks it"
            raise SeglabError(f"could not download {name} from Kaggle ({reason}): check the network connection "
                              f"and rerun; {BY_HAND}") from None
        found = next((p for p in (folder / name, folder / f"{name}.zip") if p.is_file()), None)
        if found is None:
            raise SeglabError(f"the kaggle package reported {name} downloaded but it is not in {folder}: rerun; "
                              f"{BY_HAND}")
        paths.append(found)
    return paths[0], paths[1]


def safe_member_name(archive: Path, name: str) -> PurePosixPath:
    """A zip member's name as a relative path; absolute names and names with .. are refused (zip slip)."""
    normal = name.replace("\\", "/")
    path = PurePosixPath(normal)
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":") or ".." in path.parts:
        raise SeglabError(f"'{archive}' holds the unsafe name '{name}' (absolute or with ..), which would write "
                          "outside the data folder: nothing was unpacked; use the zip from Kaggle")
    return path


def _plan(archive: Path, top: str, suffixes: tuple[str, ...]) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    """Open a zip and pick its files: name -> member, for files directly under `top`/ (or at the root)."""
    if not archive.is_file():
        raise SeglabError(f"'{archive}' does not exist: check the path of the downloaded zip")
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise SeglabError(f"'{archive}' is not a readable zip ({error}): download it again") from None
    try:
        members: dict[str, zipfile.ZipInfo] = {}
        for info in handle.infolist():
            path = safe_member_name(archive, info.filename)
            parts = path.parts[1:] if path.parts[:1] == (top,) else path.parts
            if info.is_dir() or len(parts) != 1 or parts[0].startswith(".") or "__MACOSX" in path.parts:
                continue
            if PurePosixPath(parts[0]).suffix.lower() not in suffixes:
                continue
            if parts[0] in members:
                raise SeglabError(f"'{archive}' holds '{parts[0]}' twice: download it again")
            members[parts[0]] = info
        if not members:
            raise SeglabError(f"'{archive}' holds no {'/'.join(suffixes)} files under {top}/: is it Kaggle's "
                              f"{top}.zip?")
    except SeglabError:
        handle.close()
        raise
    return handle, members


def _require_empty(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SeglabError(f"'{folder}' already holds files: choose another --dest or remove it")


def unpack_carvana(train_zip: str | Path, masks_zip: str | Path, dest: str | Path) -> tuple[int, int]:
    """Unpack Kaggle's train_hq.zip (train_hq/xxx.jpg) and train_masks.zip (train_masks/xxx_mask.gif)
    into dest/images and dest/masks; returns (images, masks). Every name is checked before anything
    is written, and the folders appear only once complete."""
    dest = Path(dest)
    for folder in (dest / "images", dest / "masks"):
        _require_empty(folder)
    images_zip, images = _plan(Path(train_zip), "train_hq", IMAGE_SUFFIXES)
    try:
        masks_handle, masks = _plan(Path(masks_zip), "train_masks", MASK_SUFFIXES)
    except SeglabError:
        images_zip.close()
        raise
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".carvana-", suffix=".tmp", dir=dest))
    try:
        with images_zip, masks_handle:
            for handle, members, kind in ((images_zip, images, "images"), (masks_handle, masks, "masks")):
                (staging / kind).mkdir()
                for name, info in members.items():
                    with handle.open(info) as source, open(staging / kind / name, "wb") as target:
                        shutil.copyfileobj(source, target, 1 << 20)
        for kind in ("images", "masks"):
            if (dest / kind).is_dir():
                (dest / kind).rmdir()
            os.replace(staging / kind, dest / kind)
    except zipfile.BadZipFile as error:
        raise SeglabError(f"a zip is damaged ({error}): download it again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(images), len(masks)


def fetch_carvana(dest: str | Path, train_zip: str | Path | None = None, masks_zip: str | Path | None = None,
                  log=print) -> bool:
    """`seglab data carvana`: download (unless both zips are given), unpack, check. True when the
    check finds nothing wrong."""
    from seglab.data.preflight import format_preflight, run_preflight

    dest = Path(dest)
    if (train_zip is None) != (masks_zip is None):
        raise SeglabError("pass both --train-zip and --masks-zip, or neither to download them from Kaggle")
    for folder in (dest / "images", dest / "masks"):
        _require_empty(folder)
    if train_zip is None:
        created = [folder for folder in (dest, dest / "downloads") if not folder.exists()]
        try:
            train_zip, masks_zip = download_carvana(dest / "downloads")
        except SeglabError:
            for folder in reversed(created):  # leave no empty folders behind a failed download
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise
    count_images, count_masks = unpack_carvana(train_zip, masks_zip, dest)
    log(f"unpacked {count_images} images into {dest / 'images'} and {count_masks} masks into {dest / 'masks'}")
    report = run_preflight(dest)
    log(format_preflight(report))
    if report.errors:
        return False
    where = "" if dest == Path("data/carvana") else f" {dest}"
    log(f"train with: seglab train --config configs/carvana.yaml{where}")
    return report.ok
