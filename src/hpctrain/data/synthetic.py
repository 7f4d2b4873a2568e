"""`hpctrain pack synthetic-em`: EM-like images with membrane masks, any count and size, for scaling runs.

Each sample is a Voronoi tessellation of random cell centres (cells 35-70 px across), its boundaries
warped by a smooth random field and thickened to membranes of varying width (2-6 px). The image has a
grey level per cell, a smooth texture, dark membranes, dark organelle-like blobs inside cells (not
membrane), blur and noise. Masks follow ISBI: 0 = membrane, 1 = cell. Sample i depends only on
(seed, i), so a file is reproducible and any sample can be regenerated alone.
"""
import numpy as np
from scipy import ndimage

from hpctrain.atomic import check_new_output
from hpctrain.data import packing
from hpctrain.errors import UserError

CLASS_NAMES = ["membrane", "cell"]
MIN_SIZE = 16


def pack(out, *, count, size, seed, force=False, compression=None):
    check_new_output(out, force)
    if count < 1 or size < MIN_SIZE:
        raise UserError(f"need --count >= 1 and --size >= {MIN_SIZE} (got {count} and {size})")
    source = {"name": f"synthetic-em count={count} size={size} seed={seed}", "sha256": None, "role": "generator"}
    with packing.create(out, kind="segmentation", class_names=CLASS_NAMES, label_values=[0, 1], sources=[source],
                        splits=packing.holdout_splits(count), force=force, compression=compression) as writer:
        writer.create("images", count, (size, size), np.uint8)
        writer.create("masks", count, (size, size), np.uint8)
        for i in range(count):
            image, mask = sample(size, seed, i)
            writer.append("images", image)
            writer.append("masks", mask)
    return out


def sample(size, seed, index):
    """(image, mask), both size x size uint8; mask 0 = membrane, 1 = cell."""
    rng = np.random.default_rng([seed, index])
    cell = rng.uniform(35, 70)
    warp_y, warp_x, texture, width = smooth_noise(rng, size, scale=cell / 2, count=4)

    # Voronoi cells of random centres, sampled at warped coordinates so boundaries curve
    centres = np.ones((size, size), bool)
    n = max(2, round(size * size / cell**2))
    centres[rng.integers(0, size, n), rng.integers(0, size, n)] = False
    _, (near_y, near_x) = ndimage.distance_transform_edt(centres, return_indices=True)
    yy, xx = np.indices((size, size))
    y = np.clip(yy + warp_y * cell / 4, 0, size - 1).astype(np.intp)
    x = np.clip(xx + warp_x * cell / 4, 0, size - 1).astype(np.intp)
    cells = (near_y * size + near_x)[y, x]

    boundary = np.zeros((size, size), bool)
    boundary[:-1] |= cells[:-1] != cells[1:]
    boundary[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    to_boundary = distance(~boundary)
    half_width = 1 + 2 / (1 + np.exp(-width))  # 1..3 px
    mask = (to_boundary >= half_width).astype(np.uint8)

    blobs = np.ones((size, size), bool)
    k = rng.poisson(size * size / 5000)
    blobs[rng.integers(0, size, k), rng.integers(0, size, k)] = False
    blob_radius = rng.uniform(3, 8)

    grey = rng.uniform(150, 205, size * size)[cells] + 12 * texture
    grey -= rng.uniform(90, 130) * np.exp(-(to_boundary / half_width) ** 2)
    grey -= 50 * (distance(blobs) < blob_radius) * mask
    grey = ndimage.gaussian_filter(grey, 1.0) + rng.normal(0, 8, grey.shape)
    return np.clip(grey, 0, 255).astype(np.uint8), mask


def distance(mask):
    """Distance to the nearest False pixel: the mean of the taxicab and chessboard distances, an
    octagonal approximation of the Euclidean distance that is ten times faster to compute."""
    return (ndimage.distance_transform_cdt(mask, "taxicab") + ndimage.distance_transform_cdt(mask, "chessboard")) / 2


def smooth_noise(rng, size, scale, count):
    """`count` smooth random fields of about unit spread with features of `scale` px: Gaussian
    interpolation of random values on a coarse grid, as two small matrix products."""
    nodes = np.arange(-2 * scale, size + 2 * scale, scale)
    weights = np.exp(-0.5 * ((np.arange(size)[:, None] - nodes[None]) / scale) ** 2)
    weights /= np.sqrt((weights**2).sum(1, keepdims=True))
    return weights @ rng.standard_normal((count, len(nodes), len(nodes))) @ weights.T
