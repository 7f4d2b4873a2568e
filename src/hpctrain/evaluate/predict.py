"""Prediction on images of any size by overlapping tiles, and the files predictions are written to.

`predict_fn(batch (B,tile,tile,C) of pixels) -> (B,tile,tile)` probabilities is any callable, e.g. a Keras
model's `predict_on_batch` followed by taking the class-1 channel.
"""
import csv
from pathlib import Path

import numpy as np
import tifffile

from hpctrain.atomic import atomic_output
from hpctrain.errors import UserError


def predict_tiled(predict_fn, image, tile, overlap=None, batch_size=8):
    """Probability map (H,W) float32 of an image (H,W) or (H,W,C).

    Images smaller than the tile are reflect-padded. Tiles overlap by at least `overlap` pixels (default
    tile // 4) and cover the image. Their outputs are blended with a separable Tukey window: 1 in the tile's
    centre, falling as a half Hann over the outer `overlap` pixels to a small positive weight at the edge,
    so the less reliable tile borders hardly count where tiles overlap and seams vanish. An image of
    exactly one tile returns the untiled output bit for bit.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or not image.size:
        raise UserError(f"expected an image (H,W) or (H,W,C), got shape {image.shape}")
    overlap = tile // 4 if overlap is None else overlap
    if tile < 1 or not 0 <= overlap < tile or batch_size < 1:
        raise UserError(f"need tile >= 1, 0 <= overlap < tile, batch size >= 1 (tile {tile}, overlap {overlap})")
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, max(tile - h, 0)), (0, max(tile - w, 0)), (0, 0)), mode="reflect")
    ys, xs = (_starts(n, tile, overlap) for n in padded.shape[:2])
    corners = [(y, x) for y in ys for x in xs]

    edge_distance = np.minimum(np.arange(tile), np.arange(tile)[::-1]) + 0.5
    taper = np.sin(0.5 * np.pi * np.minimum(edge_distance / overlap, 1)) ** 2 if overlap else np.ones(tile)
    window = np.outer(taper, taper)
    weight_sum = np.zeros(padded.shape[:2])
    for y, x in corners:
        weight_sum[y:y + tile, x:x + tile] += window

    out = np.zeros(padded.shape[:2])
    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        batch = np.stack([padded[y:y + tile, x:x + tile] for y, x in chunk])
        probs = _checked(predict_fn(batch), len(chunk), tile)
        for (y, x), p in zip(chunk, probs):
            # Normalised weights are exactly 1 where one tile alone covers a pixel.
            out[y:y + tile, x:x + tile] += p * (window / weight_sum[y:y + tile, x:x + tile])
    return out[:h, :w].astype(np.float32)


def predict_volume(predict_fn, volume, tile, overlap=None, batch_size=8):
    """`predict_tiled` on every slice of a stack (N,H,W) or (N,H,W,C); returns (N,H,W) float32."""
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4) or not len(volume):
        raise UserError(f"expected a stack (N,H,W) or (N,H,W,C), got shape {volume.shape}")
    return np.stack([predict_tiled(predict_fn, s, tile, overlap, batch_size) for s in volume])


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


def _starts(length, tile, overlap):
    """Tile offsets along one axis (length >= tile): evenly spread, first 0, last length - tile, at most
    tile - overlap apart."""
    n = int(np.ceil((length - overlap) / (tile - overlap))) if length > tile else 1
    return np.linspace(0, length - tile, n).round().astype(int)


def _checked(probs, n, tile):
    probs = np.asarray(probs)
    if probs.shape == (n, tile, tile, 1):
        probs = probs[..., 0]
    if probs.shape != (n, tile, tile):
        raise UserError(f"model output has shape {probs.shape}; expected {(n, tile, tile)} probabilities")
    if not (np.all(np.isfinite(probs)) and probs.min() >= 0 and probs.max() <= 1):
        raise UserError("model output lies outside [0, 1]: expected probabilities (sigmoid/softmax), not logits")
    return probs
