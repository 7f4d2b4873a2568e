"""The files of prediction: TIFF stacks in, ISBI-format TIFF and class CSV out."""
import csv
from pathlib import Path

import numpy as np
import tifffile

from hpctrain.atomic import atomic_output
from hpctrain.errors import UserError


def read_input_volume(path):
    """A grey-level TIFF image or stack as (N,H,W) uint8 or uint16."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) != 1:
                raise UserError(f"{path} holds {len(tif.series)} image series; expected one stack of equal pages")
            series = tif.series[0]
            if "S" in series.axes:
                raise UserError(f"{path} is a colour TIFF (axes {series.axes}); expected grey levels")
            volume = series.asarray()
    except (tifffile.TiffFileError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable TIFF: {e}") from None
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3:
        raise UserError(f"{path} has shape {volume.shape}; expected an image (H,W) or a stack (N,H,W)")
    if volume.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{path} has pixel type {volume.dtype}; expected 8- or 16-bit unsigned grey levels")
    return volume


def as_pixel_type(volume, dtype):
    """Integer pixels in the type a model takes, the full range of one type mapped onto the other's."""
    if volume.dtype == dtype:
        return volume
    scale = np.iinfo(dtype).max / np.iinfo(volume.dtype).max
    return np.round(volume * scale).astype(dtype)


def write_isbi_tiff(path, probs):
    """Writes probabilities of non-membrane (N,H,W) as a 32-bit float multi-page TIFF, the ISBI 2012
    submission format (0 = certainly membrane, 1 = certainly cell)."""
    probs = np.asarray(probs)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3 or not probs.size:
        raise UserError(f"expected probabilities (N,H,W), got shape {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise UserError(f"expected float probabilities in [0, 1], got dtype {probs.dtype}")
    if not (np.all(np.isfinite(probs)) and probs.min() >= 0 and probs.max() <= 1):
        raise UserError("probabilities must lie in [0, 1]")
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, probs.astype(np.float32), photometric="minisblack")


def write_class_probabilities(path, probs):
    """Writes class probabilities (N,H,W,K) as a float32 TIFF stack of N x K pages (ImageJ axes ZCYX)."""
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 4 or not probs.size:
        raise UserError(f"expected class probabilities (N,H,W,K), got shape {probs.shape}")
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, np.moveaxis(probs, -1, 1), imagej=True, metadata={"axes": "ZCYX"})


def write_class_csv(path, probs, class_names):
    """One row per image: index, predicted class name, then the probability of each class."""
    probs = np.asarray(probs, dtype=np.float64)
    class_names = [str(c) for c in class_names]
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise UserError(f"expected probabilities (N,{len(class_names)}) for {class_names}, got {probs.shape}")
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "predicted", *(f"p_{name}" for name in class_names)])
        for i, row in enumerate(probs):
            writer.writerow([i, class_names[row.argmax()], *(f"{p:.6f}" for p in row)])
