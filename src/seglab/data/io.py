"""Read images and masks from disk and write masks back: numpy only, no torch.

Every reader turns a broken or unsupported file into a DataError that names the file, so a
user sees one line instead of a decoder traceback.
"""
from __future__ import annotations

import io
import math
import os
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from seglab.data.limits import DEFAULT_MAX_PIXELS
from seglab.errors import DataError, ImageTooLargeError, NotAnImageError, ResourceError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff")
# The first bytes of TIFF and BigTIFF files, little- and big-endian: how an upload without a file
# name is told to go to tifffile, as a .tif file is.
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# A TIFF read as one image may hold a few pages besides it (thumbnails, or 3 or 4 gray pages that
# are its channels); one with more is a stack, refused before its page headers are all parsed.
MAX_TIFF_PAGES = 64
CHANNEL_COUNTS = (1, 3, 4)
# The smallest side of an image seglab trains on (check and train refuse smaller ones): the
# augmentation resamples on a grid of at least 2x2 pixels.
MIN_IMAGE_SIDE = 2
_PILLOW_LOCK = threading.Lock()  # Pillow's limit is module state: raise it for one read at a time
# A PNG's signature and IHDR chunk (length 13, then the type): its first 33 bytes give its size.
# Of (bit depth, colour type), those Pillow opens as modes L, 1, P, RGB, LA, RGBA with 8-bit
# samples, and the channels image_info counts for each mode; other PNGs go through Pillow.
PNG_START = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"
PNG_CHANNELS = {(8, 0): 1, (1, 0): 1, (8, 3): 3, (4, 3): 3, (2, 3): 3, (1, 3): 3, (8, 2): 3, (8, 4): 1, (8, 6): 3}


def max_pixels() -> int:
    """The pixel limit of whole-image reads: SEGLAB_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    value = os.environ.get("SEGLAB_MAX_PIXELS", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_PIXELS


def check_pixel_count(path: Path | str, height: int, width: int) -> None:
    """ImageTooLargeError for an image whose header claims more pixels than max_pixels()."""
    check_decoded_size(path, height * width, f"{width}x{height}")


def check_decoded_size(path: Path | str, pixels: int, shape_text: str) -> None:
    """ImageTooLargeError when the header of `path` claims `pixels` (every page and every axis but
    the colour samples, multiplied) beyond max_pixels(); `shape_text` shows the claimed shape."""
    limit = max_pixels()
    if pixels > limit:
        raise ImageTooLargeError(f"'{path}' claims {shape_text} pixels ({pixels / 1e6:.0f} megapixels), "
                                 f"over the limit of {limit / 1e6:.0f} megapixels (a decompression bomb, or a very "
                                 "large image): "
                                 f"pass --max-pixels {pixels} to read it, or cut it into smaller files")


def check_trainable_size(path: Path | str, height: int, width: int) -> None:
    """DataError naming `path` when the image is smaller than MIN_IMAGE_SIDE on a side."""
    if min(height, width) < MIN_IMAGE_SIDE:
        raise DataError(f"image '{path}' is {width}x{height} pixels; seglab trains on images of at least "
                        f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}: remove it or export it larger")


@contextmanager
def _pillow_opening(source: Path | io.BytesIO, name: Path | str | None = None):
    """Image.open(source) (a path or an in-memory file) with seglab's pixel limit instead of
    Pillow's, checked on the header; `name` is what messages call it (default: the path)."""
    with _PILLOW_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # seglab checks the header itself, just below
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        check_pixel_count(source if name is None else name, image.size[1], image.size[0])
        yield image
    finally:
        image.close()


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(f"'{path}' does not exist: check the path")
    if not os.access(path, os.R_OK):
        raise DataError(f"'{path}' is not readable (permissions): fix them with chmod or remove the file")
    if path.stat().st_size == 0:
        raise DataError(f"'{path}' is empty (0 bytes): re-export or remove it")


def _read_pil(path: Path | io.BytesIO, name: Path | str | None = None) -> Image.Image:
    name = path if name is None else name
    try:
        with _pillow_opening(path, name) as image:
            image.load()  # decode now, so truncated files fail here with the file's name
            return image.copy()  # the file closes with the context; the pixels stay
    except UnidentifiedImageError:
        raise NotAnImageError(f"'{name}' is not an image Pillow can read (wrong extension or not an image): "
                              "re-export or remove it") from None
    except MemoryError:
        raise ResourceError(f"not enough memory to decode '{name}': free memory or cut the image into smaller "
                            "files") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"'{name}' is corrupt or truncated ({error}): re-export or remove it") from None


def _read_tiff(path: Path | io.BytesIO, name: Path | str | None = None, stack: bool = False) -> np.ndarray:
    """The first series of a TIFF, decoded only after its header passed the pixel limit (and, unless
    `stack`, the single-image rule of `tiff_shape`)."""
    import tifffile

    name = path if name is None else name
    try:
        with tifffile.TiffFile(path) as tif:
            tiff_shape(tif, name, stack)
            if not _tifffile_decodes(tif):
                return _pillow_tiff(tif, path, name)
            array = tif.asarray()
    except DataError:
        raise
    except MemoryError:
        raise ResourceError(f"not enough memory to decode '{name}': free memory or cut the image into smaller "
                            "files") from None
    except Exception as error:  # tifffile raises many types for broken files; all mean "unreadable"
        raise DataError(f"'{name}' is not a readable TIFF ({type(error).__name__}: {error}): "
                        "re-export or remove it") from None
    return array


def _tifffile_decodes(tif) -> bool:
    """Whether tifffile has the codec of the first page (LZW, JPEG and fax need imagecodecs)."""
    import tifffile

    try:
        tifffile.TIFF.DECOMPRESSORS[tif.pages.first.compression]
    except KeyError:
        return False
    return True


def _pillow_tiff(tif, source: Path | io.BytesIO, name: Path | str) -> np.ndarray:
    """A one-page TIFF whose codec tifffile lacks, decoded by Pillow (which has LZW, JPEG, fax)."""
    if len(tif.series[0].pages) != 1:
        raise DataError(f"'{name}' is compressed with {tif.pages.first.compression.name} over several pages, which "
                        "this installation cannot decode: pip install imagecodecs, or re-export it uncompressed")
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return _pillow_pixels(source, name)


def tiff_shape(tif, name: Path | str, stack: bool = False, limited: bool = True) -> tuple[int, ...]:
    """The shape `tif.asarray()` would return (its first series), read from the headers and checked
    before anything is decoded: unless `stack`, it must be one image, (H, W), (H, W, C) or (C, H, W)
    with C in 1, 3, 4 (DataError naming the file otherwise); if `limited`, every page and every
    axis counts towards the pixel limit, colour samples aside."""
    pages = len(tif.pages)  # walks the page offsets only: cheap even for 10^5 pages
    if not stack and pages > MAX_TIFF_PAGES:
        raise DataError(f"'{name}' holds a stack of {pages} pages; split it into single images or use `read_stack`")
    if not tif.series:
        raise DataError(f"'{name}' holds no image data: re-export or remove it")
    series = tif.series[0]
    shape, axes = tuple(int(n) for n in series.shape), series.axes
    if not stack:
        _check_single_image(shape, name, series.axes)
    if limited:
        samples = math.prod(n for n, axis in zip(shape, axes) if axis == "S")
        check_decoded_size(name, math.prod(shape) // max(samples, 1), "x".join(map(str, shape)))
    return shape


def _check_single_image(shape: tuple[int, ...], name: Path | str, axes: str = "") -> None:
    """DataError unless `shape` is (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4 (`axes`: tifffile's
    letters for them; S marks colour samples)."""
    if len(shape) == 3 and axes.endswith("S") and shape[-1] not in CHANNEL_COUNTS:
        raise DataError(f"'{name}' has {shape[-1]} channels per pixel; seglab reads images of 1, 3 or 4: save the "
                        "channels the model needs")
    if len(shape) == 3 and shape[-1] not in CHANNEL_COUNTS and shape[0] not in CHANNEL_COUNTS:
        raise DataError(f"'{name}' holds a stack of {shape[0]} images; split it into single images or use "
                        "`read_stack`")
    if len(shape) not in (2, 3):
        raise DataError(f"'{name}' has shape {shape}; expected a 2-D image with optional channels")


def _tiff_height_width_channels(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W, C) of a single-image TIFF shape as `_decoded` lays it out."""
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if shape[-1] not in CHANNEL_COUNTS:  # (C, H, W) planar
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, C) in its own dtype (uint8, uint16, float32, ...).

    Palette and grayscale-with-alpha images are converted to RGB / L; alpha is dropped.
    A TIFF stack is refused here (use `read_stack`); a 2-D TIFF page is one image.
    """
    path = Path(path)
    _check_readable(path)
    return _decoded(path, path, path.suffix.lower() in TIFF_EXTENSIONS)


def decode_image(data: bytes, name: str = "upload") -> np.ndarray:
    """An image file's bytes (an upload) -> (H, W, C), decoded as `read_image` decodes the file:
    TIFFs (told by their first bytes) by tifffile, the rest by Pillow, with the same pixel limit
    and the same one-line DataErrors, which call the bytes `name`."""
    if not data:
        raise DataError(f"'{name}' is empty (0 bytes): send the image file's bytes")
    return _decoded(io.BytesIO(data), name, data[:4] in TIFF_SIGNATURES)


def _pillow_pixels(source: Path | io.BytesIO, name: Path | str) -> np.ndarray:
    """A file Pillow reads as (H, W) or (H, W, 3): palette, CMYK, ... become RGB; alpha is dropped."""
    image = _read_pil(source, name)
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "1"):
        image = image.convert("RGB" if image.mode not in ("1",) else "L")
    elif image.mode == "LA":
        image = image.convert("L")
    return np.asarray(image)


def _decoded(source: Path | io.BytesIO, path: Path | str, is_tiff: bool) -> np.ndarray:
    """The pixels of a file (or an in-memory file) as (H, W, C); `path` names it in messages."""
    if is_tiff:
        array = _read_tiff(source, path)
        if array.ndim == 3 and array.shape[-1] not in CHANNEL_COUNTS:
            array = np.moveaxis(array, 0, -1)  # (C, H, W) planar TIFF -> (H, W, C)
        if array.ndim == 3 and array.shape[-1] == 4:
            array = array[..., :3]
    else:
        array = _pillow_pixels(source, path)
    if np.iscomplexobj(array):
        raise DataError(f"'{path}' holds complex numbers, not pixel values: save the magnitude or the real part")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise DataError(f"'{path}' has shape {array.shape}; expected a 2-D image with optional channels")
    return array


def _png_header(path: Path) -> tuple[int, int, int, str] | None:
    """image_info of a PNG with 8-bit (or fewer) samples, from its IHDR chunk alone: one read of
    33 bytes instead of Pillow's open (a folder of 30,000 pairs has 60,000 headers to read). None
    for any other file, or one whose chunk is damaged: Pillow reads those and names what is wrong."""
    try:
        with open(path, "rb") as file:
            start = file.read(33)
    except OSError:
        return None
    if len(start) < 33 or not start.startswith(PNG_START):
        return None
    width, height, depth, colour = struct.unpack(">IIBB", start[16:26])
    if (depth, colour) not in PNG_CHANNELS or not (width and height) \
            or zlib.crc32(start[12:29]) != struct.unpack(">I", start[29:33])[0]:
        return None
    check_pixel_count(path, height, width)
    return height, width, PNG_CHANNELS[(depth, colour)], "uint8"


def image_info(path: str | Path) -> tuple[int, int, int, str]:
    """(height, width, channels, dtype name) from the file header, without decoding the pixels."""
    path = Path(path)
    if path.suffix.lower() == ".png" and (header := _png_header(path)) is not None:
        return header
    _check_readable(path)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:  # huge TIFFs are not refused here: predict streams them
                height, width, channels = _tiff_height_width_channels(tiff_shape(tif, path, limited=False))
                dtype = tif.series[0].dtype
        except DataError:
            raise
        except Exception as error:  # any tifffile failure means the header is unreadable
            raise DataError(f"'{path}' is not a readable TIFF ({error}): re-export or remove it") from None
        return height, width, 1 if channels == 1 else min(channels, 3), str(dtype)
    try:
        with _pillow_opening(path) as image:
            width, height = image.size
            mode = image.mode
    except UnidentifiedImageError:
        raise DataError(f"'{path}' is not an image Pillow can read (wrong extension or not an image): "
                        "re-export or remove it") from None
    except OSError as error:
        raise DataError(f"'{path}' is corrupt ({error}): re-export or remove it") from None
    channels = 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "F") else 3
    dtype = {"I;16": "uint16", "I;16B": "uint16", "I": "int32", "F": "float32"}.get(mode, "uint8")
    return height, width, channels, dtype


def read_stack(path: str | Path) -> np.ndarray:
    """Read a multi-page TIFF as (Z, H, W) or (Z, H, W, C)."""
    path = Path(path)
    _check_readable(path)
    array = _read_tiff(path, stack=True)
    return array if array.ndim >= 3 else array[None]


def read_mask_channels(path: str | Path, max_channels: int = 16) -> np.ndarray:
    """A mask holding a channel per label as (H, W, K), K >= 1: a PNG's gray, RGB or RGBA channels
    as stored (alpha kept, a palette's indices one channel), a TIFF's samples or its planes
    ((K, H, W) with K <= `max_channels` read as channels), within the pixel limit."""
    path = Path(path)
    _check_readable(path)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        array = _read_tiff(path, stack=True)
        if array.ndim == 3 and array.shape[0] <= max_channels and array.shape[0] < array.shape[-1]:
            array = np.moveaxis(array, 0, -1)  # planar (K, H, W)
    else:
        array = np.asarray(_read_pil(path))
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise DataError(f"mask '{path}' has shape {array.shape}; expected (H, W) or (H, W, channels)")
    return array


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as raw values: (H, W) for grayscale, class-index or palette masks (palette
    indices are kept, not colours); (H, W, 3) uint8 for true-colour masks whose channels differ.
    """
    return read_mask_and_palette(path)[0]


def read_mask_and_palette(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """read_mask(path), and the (N, 3) uint8 colours of a palette image's palette (None for any
    other mask), from the one decode."""
    path = Path(path)
    _check_readable(path)
    palette = None
    if path.suffix.lower() in TIFF_EXTENSIONS:
        array = _read_tiff(path)
    else:
        image = _read_pil(path)
        if image.mode == "P":
            array = np.asarray(image)  # palette index = class index, as VOC/CamVid exports do
            palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        elif image.mode in ("RGB", "RGBA"):
            array = np.asarray(image.convert("RGB"))
        elif image.mode in ("1", "LA", "L"):
            array = np.asarray(image.convert("L"))
        else:
            array = np.asarray(image)
    if array.ndim == 3:
        if array.shape[-1] == 4:
            array = array[..., :3]
        if array.shape[-1] == 1 or (array[..., 0:1] == array).all():
            array = array[..., 0]  # gray stored as RGB
    if not np.issubdtype(array.dtype, np.integer):
        if np.all(np.mod(array, 1) == 0):
            array = array.astype(np.int64)
        else:
            raise DataError(f"mask '{path}' holds non-integer values; masks must hold class values")
    return array, palette
