"""Write files whole or not at all: atomic outputs, one-line write errors, masks and pictures as PNG.

numpy and Pillow only, no torch. A failed write leaves the previous file (or none) in place.
"""
from __future__ import annotations

import base64
import errno
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.data.io import TIFF_EXTENSIONS
from seglab.errors import SeglabError


def current_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    A crash midway never leaves a half-written file under the final name; a failed write (a full
    disk, a read-only folder) is one SeglabError naming the file, and the previous file, if any,
    stays as it was.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # .NAME.PID.RANDOM.tmp.EXT: the process id tells a later run whether it is stale
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + path.suffix,
                                            dir=directory)
    except OSError as error:
        raise write_error(path, error) from None
    os.close(handle)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_error(path: Path, error: OSError) -> SeglabError:
    """One line for a file that could not be written, true to what is on disk afterwards."""
    reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.ENOTDIR: "a parent is a file, not a folder",
              errno.EDQUOT: "the disk quota is exceeded"}.get(error.errno, error.strerror or str(error))
    kept = "the previous file is intact" if path.exists() else "nothing was written"
    todo = "free space or choose another output folder" if error.errno in (errno.ENOSPC, errno.EDQUOT) \
        else "choose a writable output folder"
    return SeglabError(f"cannot write '{path}' ({reason}); {kept}: {todo}")


def write_mask(path: str | Path, mask: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write a mask: (H, W) integer values as an 8-bit PNG when they fit, 16-bit PNG, or TIFF;
    (H, W, 3) uint8 colours as an RGB PNG. With `palette` ((K, 3) uint8), an (H, W) class-index
    mask becomes a palette PNG (indices kept, colours shown by viewers).

    The suffix of `path` decides the format (.png / .tif / .tiff). Written atomically.
    """
    path = Path(path)
    mask = np.asarray(mask)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        import tifffile

        with atomic_output(path) as tmp:
            tifffile.imwrite(tmp, mask, compression="zlib", bigtiff=mask.nbytes > 2**31)
        return path
    picture = mask_picture(mask, palette, path.name)
    with atomic_output(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def mask_picture(mask: np.ndarray, palette: np.ndarray | None = None, name: str = "mask") -> Image.Image:
    """The PNG picture of a mask as `write_mask` writes it: (H, W) values in an 8-bit (or, with
    `palette`, palette) image when they fit, else 16-bit; (H, W, 3) uint8 colours as RGB."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        return Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 65535:
        raise SeglabError(f"values of '{name}' do not fit a PNG; write a .tif instead")
    if palette is not None and mask.max(initial=0) < 256:
        image = Image.fromarray(mask.astype(np.uint8)).convert("P")
        image.putpalette(np.asarray(palette, dtype=np.uint8)[:256].reshape(-1).tolist())
        return image
    if mask.max(initial=0) <= 255:
        return Image.fromarray(mask.astype(np.uint8))
    return Image.fromarray(mask.astype(np.uint16))


def png_bytes(picture: Image.Image) -> bytes:
    """A picture encoded as the PNG file `write_mask` / `write_rgb` would write, byte for byte."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(picture: np.ndarray, width: int | None = None) -> str:
    """An (H, W, 3) uint8 picture as a data: URI of a PNG (for pages and notebooks), shrunk to
    `width` pixels across when it is wider."""
    image = Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8))
    if width and image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_rgb(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 picture as PNG, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
    return path
