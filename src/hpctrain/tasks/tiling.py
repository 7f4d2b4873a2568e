"""Prediction on images of any size by overlapping tiles.

`predict_fn(batch (B,tile,tile,C) of pixels) -> (B,tile,tile)` probabilities (or (B,tile,tile,K), one per
class) is any callable, e.g. a Keras model's `predict_on_batch` followed by taking the class-1 channel.
"""
import numpy as np

from hpctrain.errors import UserError


def predict_tiled(predict_fn, image, tile, overlap=None, batch_size=8):
    """Probability map (H,W) (or (H,W,K)) float32 of an image (H,W) or (H,W,C).

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

    out = None
    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        batch = np.stack([padded[y:y + tile, x:x + tile] for y, x in chunk])
        probs = _checked(predict_fn(batch), len(chunk), tile)
        out = np.zeros(padded.shape[:2] + probs.shape[3:]) if out is None else out
        for (y, x), p in zip(chunk, probs):
            # Normalised weights are exactly 1 where one tile alone covers a pixel.
            weight = window / weight_sum[y:y + tile, x:x + tile]
            out[y:y + tile, x:x + tile] += p * (weight[..., None] if p.ndim == 3 else weight)
    return out[:h, :w].astype(np.float32)


def predict_volume(predict_fn, volume, tile, overlap=None, batch_size=8):
    """`predict_tiled` on every slice of a stack (N,H,W) or (N,H,W,C); returns (N,H,W) (or (N,H,W,K)) float32."""
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4) or not len(volume):
        raise UserError(f"expected a stack (N,H,W) or (N,H,W,C), got shape {volume.shape}")
    return np.stack([predict_tiled(predict_fn, s, tile, overlap, batch_size) for s in volume])


def _starts(length, tile, overlap):
    """Tile offsets along one axis (length >= tile): evenly spread, first 0, last length - tile, at most
    tile - overlap apart."""
    n = int(np.ceil((length - overlap) / (tile - overlap))) if length > tile else 1
    return np.linspace(0, length - tile, n).round().astype(int)


def _checked(probs, n, tile):
    probs = np.asarray(probs)
    if probs.shape == (n, tile, tile, 1):
        probs = probs[..., 0]
    if probs.shape[:3] != (n, tile, tile) or probs.ndim > 4:
        raise UserError(f"model output has shape {probs.shape}; expected {(n, tile, tile)} probabilities")
    if not (np.all(np.isfinite(probs)) and probs.min() >= 0 and probs.max() <= 1):
        raise UserError("model output lies outside [0, 1]: expected probabilities (sigmoid/softmax), not logits")
    return probs
