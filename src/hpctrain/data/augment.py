"""Random geometric augmentation in the TensorFlow graph, the same transform for an image and its mask.

The defaults are the ImageDataGenerator recipe of the classic ISBI U-Net code (rotation 20 degrees,
shifts, shear and zoom 0.05, horizontal flips, "nearest" fill) plus vertical flips; the ranges mean what
they mean in Keras (shear in degrees, shifts as fractions of the image size, zoom per axis in
[1 - z, 1 + z]). Each sample's rotation, shear, zoom, flips, shift and (training) tile crop form one
affine matrix. The optional elastic deformation follows the U-Net paper: random displacements (std
`elastic_alpha` px) on a coarse grid (`elastic_sigma` px apart), interpolated bicubically to every pixel.
One XLA-compiled resampler applies both in a single pass: bilinear for images, nearest for masks, at
the same coordinates (twice as fast as ImageProjectiveTransformV3 for an image and its mask on CPU).

Everything random comes from `draws` with a per-sample stateless seed, so a sample's transform
depends only on (seed, epoch, sample index): deterministic, resumable, independent of the world size.
"""
import functools
import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hpctrain import compat

_NUM_UNIFORMS = 10  # rotation, 2 shifts, shear, 2 zooms, 2 flips, 2 crop offsets


class AugmentSpec(BaseModel):
    """Random transforms applied identically to image and mask (`[data.augment]` of a job spec); a
    disabled spec (the default) means no augmentation."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = False
    rotation: float = Field(20.0, ge=0, le=180)   # degrees, uniform in [-r, r]
    shift: float = Field(0.05, ge=0, lt=1)        # fraction of the width and of the height
    shear: float = Field(0.05, ge=0, lt=90)       # degrees
    zoom: float = Field(0.05, ge=0, lt=1)         # scale per axis uniform in [1 - z, 1 + z]
    horizontal_flip: bool = True
    vertical_flip: bool = True
    fill_mode: Literal["nearest", "reflect", "wrap", "constant"] = "nearest"  # outside the image
    elastic: bool = False
    elastic_alpha: float = Field(10.0, ge=0)      # std of the grid displacements, pixels
    elastic_sigma: float = Field(64.0, gt=0)      # grid spacing, pixels

    @classmethod
    def crop_only(cls):
        """Random tile crops alone: enabled, every transform off."""
        return cls(enabled=True, rotation=0, shift=0, shear=0, zoom=0, horizontal_flip=False, vertical_flip=False)


def draws(epoch_seed, indices, config, out_hw):
    """Everything random about each sample of a batch: from its stateless seed, the epoch's seed [2]
    folded with the sample's index (indices [B])."""
    tf = compat.tf()
    grid = [_grid_points(n, config.elastic_sigma) for n in out_hw]
    signature = {"uniform": tf.TensorSpec([_NUM_UNIFORMS], tf.float32)}
    if config.elastic:
        signature["grid"] = tf.TensorSpec([*grid, 2], tf.float32)

    def one(index):
        seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
        result = {"uniform": tf.random.stateless_uniform([_NUM_UNIFORMS], seed)}
        if config.elastic:
            result["grid"] = tf.random.stateless_normal([*grid, 2], tf.random.experimental.stateless_fold_in(seed, 1))
        return result

    return tf.map_fn(one, indices, fn_output_signature=signature)


def transform(images, masks, draws, config, out_hw):
    """Applies each sample's transform to a batch: images [B, H, W, C] (bilinear), masks [B, H, W, 1] or
    None (nearest), of any numeric type; returns both in their own type (integer images rounded) at
    out_hw (a crop when smaller than H, W)."""
    tf = compat.tf()
    matrices = affine_matrices(draws["uniform"], config, tf.shape(images)[1:3], out_hw)
    displacement = None
    if config.elastic:  # bicubic interpolation of the grid, as two small matrix products per sample
        rows, cols = (tf.constant(_cubic_weights(n, g), tf.float32) for n, g in zip(out_hw, draws["grid"].shape[1:3]))
        displacement = config.elastic_alpha * tf.einsum("ig,bghc,jh->bijc", rows, draws["grid"], cols)
    return _resampler(tuple(out_hw), config.fill_mode)(images, masks, matrices, displacement)


def affine_matrices(uniform, config, in_hw, out_hw):
    """[B, 8] output-to-input matrices: output pixel p maps to input A (p - c_out) + c_in + shift, where
    A = rotation . shear . zoom . flip and c_in is the centre of a random out_hw crop."""
    tf = compat.tf()
    u = tf.unstack(uniform, axis=1)  # each in [0, 1)
    s = [2 * v - 1 for v in u]  # each in [-1, 1)
    in_h, in_w = (tf.cast(n, tf.float32) for n in tf.unstack(in_hw))
    out_h, out_w = (float(n) for n in out_hw)
    theta = s[0] * math.radians(config.rotation)
    shift_y, shift_x = s[1] * config.shift * in_h, s[2] * config.shift * in_w
    shear = s[3] * math.radians(config.shear)
    zoom_y, zoom_x = 1 + s[4] * config.zoom, 1 + s[5] * config.zoom
    flip_y = tf.where(u[6] < 0.5, -1.0, 1.0) if config.vertical_flip else 1.0
    flip_x = tf.where(u[7] < 0.5, -1.0, 1.0) if config.horizontal_flip else 1.0
    # integer crop offsets, so that a crop alone copies pixels exactly
    top = tf.minimum(tf.floor(u[8] * (in_h - out_h + 1)), in_h - out_h)
    left = tf.minimum(tf.floor(u[9] * (in_w - out_w + 1)), in_w - out_w)

    a00, a01 = tf.cos(theta) * zoom_x * flip_x, -tf.sin(theta + shear) * zoom_y * flip_y
    a10, a11 = tf.sin(theta) * zoom_x * flip_x, tf.cos(theta + shear) * zoom_y * flip_y
    cy_out, cx_out = (out_h - 1) / 2, (out_w - 1) / 2
    cy_in, cx_in = top + cy_out, left + cx_out
    b0 = cx_in + shift_x - a00 * cx_out - a01 * cy_out
    b1 = cy_in + shift_y - a10 * cx_out - a11 * cy_out
    zero = tf.zeros_like(a00)
    return tf.stack([a00, a01, b0, a10, a11, b1, zero, zero], axis=1)


def _grid_points(n, spacing):
    return max(2, math.ceil(n / spacing) + 1)


def _cubic_weights(n, points):
    """[n, points] weights interpolating `points` grid values, spread evenly from the first pixel to the
    last, to n pixels with the cubic convolution kernel (a = -0.5); rows normalised at the borders."""
    d = np.abs(np.linspace(0, points - 1, n)[:, None] - np.arange(points)[None])
    w = np.where(d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1, np.where(d < 2, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2, 0))
    return w / w.sum(1, keepdims=True)


@functools.cache
def _start_xla():
    """XLA's first compilation logs its start-up (info lines) to stderr; done once here, filtered."""
    tf = compat.tf()
    with tf.init_scope(), compat.quiet_native_logs():  # eagerly, also when called while tracing
        tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(0.0))


@functools.cache
def _resampler(out_hw, fill_mode):
    """A compiled (XLA) function sampling images bilinearly and masks at the nearest pixel, both at the
    same coordinates: matrices [B, 8] map output to input pixels after an optional displacement
    [B, h, w, 2] (dy, dx) of the output grid. Gathering the raw (e.g. uint8) values and converting
    only those is faster than converting whole images first."""
    tf = compat.tf()
    _start_xla()
    out_h, out_w = out_hw

    def place(i, n):
        """Integer coordinates outside 0..n-1 mapped by the fill mode; also whether they were inside."""
        inside = (i >= 0) & (i < n)
        if fill_mode == "reflect":  # d c b a | a b c d | d c b a
            i = i % (2 * n)
            i = tf.where(i >= n, 2 * n - 1 - i, i)
        elif fill_mode == "wrap":
            i = i % n
        return tf.clip_by_value(i, 0, n - 1), inside

    @tf.function(jit_compile=True)
    def resample(images, masks, matrices, displacement):
        batch, h, w, channels = tf.unstack(tf.shape(images))
        y, x = tf.meshgrid(tf.range(out_h, dtype=tf.float32), tf.range(out_w, dtype=tf.float32), indexing="ij")
        if displacement is not None:
            y, x = y + displacement[..., 0], x + displacement[..., 1]
        m = matrices[:, :, None, None]
        x, y = m[:, 0] * x + m[:, 1] * y + m[:, 2], m[:, 3] * x + m[:, 4] * y + m[:, 5]
        x0, y0 = tf.floor(x), tf.floor(y)
        wx, wy = (x - x0)[..., None], (y - y0)[..., None]
        x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)

        def at(array, dy, dx):
            """array [B, H, W, C] at pixel (y0 + dy, x0 + dx) of every output pixel."""
            (yi, y_in), (xi, x_in) = place(y0 + dy, h), place(x0 + dx, w)
            flat = tf.reshape(array, [batch, h * w, -1])
            values = tf.gather(flat, tf.reshape(yi * w + xi, [batch, -1]), batch_dims=1)
            values = tf.cast(tf.reshape(values, [batch, out_h, out_w, -1]), tf.float32)
            return values * tf.cast(y_in & x_in, tf.float32)[..., None] if fill_mode == "constant" else values

        v00, v01, v10, v11 = at(images, 0, 0), at(images, 0, 1), at(images, 1, 0), at(images, 1, 1)
        top, bottom = v00 + (v01 - v00) * wx, v10 + (v11 - v10) * wx
        images = _cast(top + (bottom - top) * wy, images.dtype)
        if masks is None:
            return images, None
        nearest = at(masks, tf.cast(wy[..., 0] >= 0.5, tf.int32), tf.cast(wx[..., 0] >= 0.5, tf.int32))
        return images, _cast(nearest, masks.dtype)

    return resample


def _cast(values, dtype):
    """float32 values back to the input's type, rounded to the nearest integer for integer types."""
    tf = compat.tf()
    return tf.cast(tf.round(values) if dtype.is_integer else values, dtype)
