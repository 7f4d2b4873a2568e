"""Augmentation: image and mask stay aligned, zero ranges change nothing, flips and fills are exact; the
job spec's [data.augment] is the config the pipeline takes."""
from pathlib import Path

import h5py
import numpy as np
import pydantic
import pytest
from scipy import ndimage

from hpctrain import compat, spec
from hpctrain.data import packing, pipeline
from hpctrain.data.augment import AugmentSpec, transform
from hpctrain.errors import UserError

pytestmark = pytest.mark.fast

STILL = dict(enabled=True, rotation=0, shift=0, shear=0, zoom=0, horizontal_flip=False, vertical_flip=False)
UNET_JOB = Path(__file__).parent.parent / "jobs" / "unet_isbi.toml"


@pytest.fixture(scope="module")
def blobs_h5(isbi_h5, tmp_path_factory):
    """8 real ISBI crops, blurred and stretched, whose masks are the images thresholded at 127.5: an
    augmented mask must still be the threshold of its augmented image."""
    with h5py.File(isbi_h5, "r") as f:
        crops = f["images"][:8, :128, :160].astype(np.float64)
    images = np.stack([ndimage.gaussian_filter(c, 4) for c in crops])
    low, high = np.percentile(images, [5, 95], axis=(1, 2), keepdims=True)
    images = np.clip((images - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    out = tmp_path_factory.mktemp("blobs") / "blobs.h5"
    with packing.create(out, kind="segmentation", class_names=["dark", "bright"], label_values=[0, 1],
                        sources=[], splits=packing.all_split(8)) as writer:
        writer.write("images", images)
        writer.write("masks", (images > 127).astype(np.uint8))
    return out


def epoch(path, augment, seed=4, tile=None):
    ds, steps = pipeline.train_dataset(path, "all", rank=0, size=1, batch_size=4, seed=seed, augment=augment, tile=tile)
    got = [(x.numpy(), y.numpy()) for x, y in ds.take(steps)]
    return np.concatenate([x for x, _ in got])[..., 0], np.concatenate([y for _, y in got])[..., 0]


@pytest.mark.parametrize("elastic", [False, True])
def test_image_and_mask_stay_aligned(blobs_h5, elastic):
    strong = AugmentSpec(enabled=True, rotation=40, shift=0.1, shear=10, zoom=0.2, elastic=elastic, elastic_alpha=6,
                         elastic_sigma=40)
    plain_x, _ = epoch(blobs_h5, None)
    x, y = epoch(blobs_h5, strong, tile=96)
    assert x.shape == (8, 96, 96) and set(np.unique(y)) == {0, 1}
    threshold = (x > 127).astype(np.uint8)  # x is the interpolated value rounded
    near_edge = ndimage.binary_dilation(y, np.ones((1, 5, 5))) & ~ndimage.binary_erosion(y, np.ones((1, 5, 5)))
    wrong = threshold != y
    assert not (wrong & ~near_edge).any()  # disagreements only where interpolation blurs an edge
    assert wrong.mean() < 0.02
    shifted = np.roll(y, 3, axis=2)  # a mask 3 px off would be caught
    assert ((threshold != shifted) & ~near_edge).mean() > 0.01
    assert not np.allclose(x.astype(int), plain_x[:, :96, :96], atol=12)  # the transform did something


def test_zero_ranges_and_a_disabled_spec_change_nothing(blobs_h5):
    plain_x, plain_y = epoch(blobs_h5, None)
    for augment in (AugmentSpec(**STILL), AugmentSpec(rotation=40, elastic=True)):  # the second is disabled
        x, y = epoch(blobs_h5, augment)
        assert np.array_equal(x, plain_x) and np.array_equal(y, plain_y)


@pytest.mark.parametrize("flip, axis", [("horizontal_flip", 2), ("vertical_flip", 1)])
def test_flips_are_exact(blobs_h5, flip, axis):
    plain_x, plain_y = epoch(blobs_h5, None)
    x, y = epoch(blobs_h5, AugmentSpec(**{**STILL, flip: True}))
    flipped = [not np.array_equal(x[i], plain_x[i]) for i in range(8)]
    for i in range(8):
        expected_x = np.flip(plain_x[i], axis - 1) if flipped[i] else plain_x[i]
        expected_y = np.flip(plain_y[i], axis - 1) if flipped[i] else plain_y[i]
        assert np.array_equal(x[i], expected_x) and np.array_equal(y[i], expected_y)
    assert 0 < sum(flipped) < 8


@pytest.mark.parametrize("fill_mode, expected", [("nearest", [2, 3, 3, 3]), ("constant", [2, 3, 0, 0]),
                                                 ("wrap", [2, 3, 0, 1]), ("reflect", [2, 3, 3, 2])])
def test_fill_modes(fill_mode, expected):
    tf = compat.tf()
    columns = np.tile(np.arange(4, dtype=np.uint8), (4, 1))[None, ..., None]  # value = column
    config = AugmentSpec(**{**STILL, "shift": 0.5, "fill_mode": fill_mode})
    shift_by_2 = {"uniform": tf.constant([[0.5, 0.5, 1.0, 0.5, 0.5, 0.5, 1, 1, 0, 0]])}  # x + 2, y unchanged
    images, masks = transform(tf.constant(columns), tf.constant(columns), shift_by_2, config, (4, 4))
    assert np.array_equal(images.numpy()[0, :, :, 0], np.tile(expected, (4, 1)))
    assert np.array_equal(masks.numpy()[0, :, :, 0], np.tile(expected, (4, 1)))


def test_same_seed_same_transform_other_seed_other_transform(blobs_h5):
    a, _ = epoch(blobs_h5, AugmentSpec(enabled=True), seed=1)
    b, _ = epoch(blobs_h5, AugmentSpec(enabled=True), seed=1)
    c, _ = epoch(blobs_h5, AugmentSpec(enabled=True), seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_classification_labels_are_untouched(mnist_h5):
    kw = dict(rank=0, size=1, batch_size=256, seed=3)
    plain, _ = pipeline.train_dataset(mnist_h5, "holdout", **kw)
    augmented, _ = pipeline.train_dataset(mnist_h5, "holdout", augment=AugmentSpec(enabled=True, horizontal_flip=False,
                                                                                   vertical_flip=False), **kw)
    (x0, y0), (x1, y1) = next(iter(plain)), next(iter(augmented))
    assert np.array_equal(y0.numpy(), y1.numpy()) and x1.shape == (256, 28, 28, 1)
    assert not np.array_equal(x0.numpy(), x1.numpy())


def test_the_job_spec_section_is_the_config():
    job = spec.load(UNET_JOB, ["data.augment.rotation=5", "data.augment.fill_mode='wrap'"])
    assert job.data.augment == AugmentSpec(enabled=True, rotation=5, fill_mode="wrap")
    for override, message in (("data.augment.fill_mode='mirror'", "data.augment.fill_mode: Input should be 'nearest', "
                                                                  "'reflect', 'wrap' or 'constant' (got 'mirror')"),
                              ("data.augment.rotation=-1", "data.augment.rotation: Input should be greater than or "
                                                           "equal to 0 (got -1)"),
                              ("data.augment.zoom=1.5", "data.augment.zoom: Input should be less than 1 (got 1.5)"),
                              ("data.augment.elastic_sigma=0", "data.augment.elastic_sigma: Input should be greater "
                                                               "than 0 (got 0)"),
                              ("data.augment.rotate=3", "unknown key data.augment.rotate")):
        with pytest.raises(UserError) as raised:
            spec.load(UNET_JOB, [override])
        assert message in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(pydantic.ValidationError, match="shift"):  # assignments are checked too
        job.data.augment.shift = 1.0
