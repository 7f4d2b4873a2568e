"""Reading PNG and TIFF files as the packers need them: every file of a folder brought to one pixel layout.

A file may be grey, grey+alpha, RGB or RGBA, 8 or 16 bit (a palette image is read as RGBA, or as its
indices where they are class ids). An alpha channel is dropped when it is fully opaque and refused when it
is not: the transparency carries information only the user can decide about. RGB whose channels are equal
is grey stored as colour, and becomes grey. `PixelLayout` then gives every file of a folder the same
channels (grey, or RGB) and depth (8 or 16 bit), and counts what it converted, per original mode.
"""
import collections
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from hpctrain.data import schema
from hpctrain.errors import UserError

SUFFIXES = (".png", ".tif", ".tiff")
CHANNEL_NAMES = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PALETTE = 3  # the IHDR colour type of a palette image


def read(path, palette="rgb"):
    """(H, W, C) uint8 or uint16 pixels (C = 1..4) and the file's mode, e.g. "RGBA 8-bit". A palette image
    becomes RGBA, or with `palette="index"` its (H, W, 1) indices."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array, mode = _read_tiff(path)
        elif (header := _png_depth_and_colour(path)) and header[0] in (8, 16) and header[1] != PNG_PALETTE:
            array, mode = _read_png(path)
        else:
            array, mode = _read_pillow(path, palette)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, tifffile.TiffFileError,
            imagecodecs.PngError) as e:
        raise UserError(f"{path}: not a readable image ({schema.first_line(e)})") from None
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise UserError(f"{path}: {schema.shape_text(array.shape)} pixels, expected a grey or colour image")
    return np.ascontiguousarray(array), mode


def _read_tiff(path):
    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) != 1:
            raise UserError(f"{path}: {len(tif.pages)} pages, expected one slice per file")
        page = tif.pages[0]
        array = page.asarray()
        if page.axes.startswith("S"):  # planar: one plane per channel
            array = np.moveaxis(array, 0, -1)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{path}: {array.dtype} pixels, expected 8- or 16-bit unsigned integers")
    channels = array.shape[2] if array.ndim == 3 else 1
    return array, f"{CHANNEL_NAMES.get(channels, f'{channels}-channel')} {8 * array.itemsize}-bit"


def _png_depth_and_colour(path):
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_png(path):
    """An 8- or 16-bit PNG that is not a palette, through libpng: at full depth (Pillow reads 16-bit colour as 8
    bits), faster than Pillow, and a tRNS transparent colour as the alpha it is."""
    array = imagecodecs.png_decode(path.read_bytes())
    channels = array.shape[2] if array.ndim == 3 else 1
    return array, f"{CHANNEL_NAMES[channels]} {8 * array.itemsize}-bit"


def _read_pillow(path, palette):
    with Image.open(path) as img:
        mode = img.mode
        if mode in ("P", "PA"):
            if palette == "index":
                return np.asarray(img.convert("P") if mode == "PA" else img), "palette 8-bit"
            return np.asarray(img.convert("RGBA")), "palette 8-bit"
        if mode not in ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I"):
            raise UserError(f"{path}: image mode {mode}, expected grey, grey+alpha, RGB or RGBA")
        array = np.asarray(img)
    if array.dtype == bool:
        return array.astype(np.uint8), "1-bit"
    if array.dtype.kind in "iu" and array.dtype.itemsize > 1:  # Pillow reads 16-bit grey as I;16 or int32
        if array.min() < 0 or array.max() > 65535:
            raise UserError(f"{path}: 32-bit pixels, expected 8- or 16-bit")
        return array.astype(np.uint16), "grey 16-bit"
    channels = array.shape[2] if array.ndim == 3 else 1
    return array, f"{CHANNEL_NAMES[channels]} 8-bit"


def flatten(array, path):
    """(pixels (H, W, 1|3), what was done): opaque alpha dropped, equal colour channels made grey."""
    done = []
    if array.shape[2] in (2, 4):
        alpha = array[..., -1]
        opaque = np.iinfo(array.dtype).max
        if not np.all(alpha == opaque):
            raise UserError(f"{path}: {np.count_nonzero(alpha != opaque)} pixels are not fully opaque; the alpha "
                            "channel carries information hpctrain will not guess about: remove it or flatten the "
                            "image onto a background first")
        array = array[..., :-1]
        done.append("opaque alpha dropped")
    if array.shape[2] == 3 and np.array_equal(array[..., :1], array[..., 1:2]) and \
            np.array_equal(array[..., :1], array[..., 2:]):
        array = array[..., :1]
        done.append("equal channels")
    return array, done


def bits(path):
    """The file's bits per sample from its header alone (8 for 1-bit and palette files)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                return 16 if tif.pages[0].dtype == np.uint16 else 8
        depth = _png_depth_and_colour(path)
        if depth is not None:
            return 16 if depth[0] == 16 else 8
        with Image.open(path) as img:
            return 16 if img.mode.startswith("I") else 8
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, tifffile.TiffFileError) as e:
        raise UserError(f"{path}: not a readable image ({schema.first_line(e)})") from None


class PixelLayout:
    """One layout for all files of a folder: `channels` 1 (grey) or 3 (RGB), `dtype` uint8 or uint16.

    channels=None takes the first file's: a grey file then joins an RGB layout (its value in each channel,
    lossless), but a colour file never becomes grey unless channels=1 is asked for (luminance weights).
    8-bit files join a 16-bit layout scaled by 257 (0..255 -> 0..65535); `dtype` None is the deepest file's.
    `converted` counts the files of each role by "original mode -> stored layout (what was done)".
    """

    def __init__(self, files, channels=None, dtype=None):
        if channels not in (None, 1, 3):
            raise UserError(f"channels must be 1 or 3, not {channels}")
        self.channels, self.forced = channels, channels is not None
        self.dtype = np.dtype(dtype) if dtype else np.dtype(np.uint16 if any(bits(f) == 16 for f in files)
                                                            else np.uint8)
        self.converted = collections.defaultdict(collections.Counter)
        self._first = None

    def read(self, path, role="images"):
        """The file's pixels in this layout: (H, W) for grey, (H, W, 3) for RGB."""
        raw, mode = read(path)
        array, done = flatten(raw, path)
        if self.channels is None:
            self.channels = array.shape[2]
        if array.shape[2] == 3 and self.channels == 1 and self.forced:
            weights = np.asarray(LUMINANCE, np.float32)
            array = np.rint(array.astype(np.float32) @ weights)[..., None].astype(array.dtype)
            done.append("luminance")
        elif array.shape[2] == 1 and self.channels == 3:
            array = np.repeat(array, 3, axis=2)
            done.append("grey in each channel")
        if array.shape[2] != self.channels:
            raise UserError(f"{path}: a colour image, but {self._first} before it is grey: pack with --channels 3 "
                            "to keep colour, or --channels 1 for grey by luminance")
        if array.dtype != self.dtype:
            if array.dtype == np.uint16:
                raise UserError(f"{path}: 16-bit, but the layout is 8-bit: converting would lose precision")
            array = array.astype(np.uint16) * np.uint16(257)
            done.append("8 -> 16 bit")
        self._first = self._first or Path(path).name
        stored = f"{CHANNEL_NAMES[self.channels]} {8 * self.dtype.itemsize}-bit"
        self.converted[role][f"{mode} -> {stored}" + (f" ({', '.join(done)})" if done else "")] += 1
        return array[..., 0] if self.channels == 1 else array
