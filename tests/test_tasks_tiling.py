import csv

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from hpctrain.errors import UserError
from hpctrain.evaluate.tsne import plot_tsne
from hpctrain.tasks.files import (
    as_pixel_type,
    read_input_volume,
    write_class_csv,
    write_class_probabilities,
    write_isbi_tiff,
)
from hpctrain.tasks.tiling import predict_tiled, predict_volume

pytestmark = pytest.mark.fast

RNG = np.random.default_rng(0)


def pointwise(batch):
    return 1 / (1 + np.exp(-batch.sum(axis=-1)))


def local_filter(batch):
    return 1 / (1 + np.exp(-4 * ndimage.uniform_filter(batch[..., 0], size=(1, 7, 7), mode="reflect")))


def test_one_tile_is_the_untiled_output_exactly():
    ramp = np.linspace(-3, 3, 32 * 32).reshape(32, 32)  # position-dependent: tiling would change it
    fn = lambda b: 1 / (1 + np.exp(-b[..., 0] * ramp))  # noqa: E731
    image = RNG.normal(size=(32, 32)).astype(np.float32)
    untiled = fn(image[None, ..., None])[0].astype(np.float32)
    np.testing.assert_array_equal(predict_tiled(fn, image, 32, overlap=8), untiled)


@pytest.mark.parametrize("shape", [(100, 75), (70, 45, 2), (20, 13), (32, 90)])
def test_pointwise_model_tiles_to_the_whole_image(shape):
    image = RNG.normal(size=shape).astype(np.float32)
    calls = []
    fn = lambda b: calls.append(len(b)) or pointwise(b)  # noqa: E731
    out = predict_tiled(fn, image, 32, overlap=8, batch_size=3)
    assert out.shape == shape[:2] and out.dtype == np.float32
    whole = pointwise(image if image.ndim == 3 else image[..., None])
    np.testing.assert_allclose(out, whole, rtol=1e-6, atol=1e-7)
    assert max(calls) <= 3 and (sum(calls) > 1) == (max(shape[:2]) > 32)


def test_class_probabilities_tile_channel_by_channel(tmp_path):
    image = RNG.normal(size=(70, 45)).astype(np.float32)

    def softmax3(batch):  # pointwise, 3 classes
        logits = np.stack([batch[..., 0], -batch[..., 0], 0 * batch[..., 0]], -1)
        e = np.exp(logits)
        return e / e.sum(-1, keepdims=True)

    out = predict_tiled(softmax3, image, 32, overlap=8)
    assert out.shape == (70, 45, 3)
    np.testing.assert_allclose(out, softmax3(image[None, ..., None])[0], rtol=1e-6, atol=1e-7)
    write_class_probabilities(tmp_path / "p.tif", np.stack([out, out]))
    pages = tifffile.imread(tmp_path / "p.tif")
    assert pages.shape == (2, 3, 70, 45) and np.allclose(pages[1, 2], out[..., 2])


def test_blending_hides_seams_of_a_local_filter():
    image = RNG.normal(size=(150, 130)).astype(np.float32)
    whole = local_filter(image[None, ..., None])[0]
    seam = np.abs(predict_tiled(local_filter, image, 64, overlap=0) - whole).max()
    blended = np.abs(predict_tiled(local_filter, image, 64, overlap=16) - whole).max()
    assert seam > 0.05 and blended < seam / 5


def test_output_range_and_shape_checks():
    image = RNG.random((40, 40)).astype(np.float32)
    out = predict_tiled(lambda b: RNG.random(b.shape[:3]), image, 16, overlap=4)
    assert 0 <= out.min() and out.max() <= 1
    with pytest.raises(UserError, match="logits"):
        predict_tiled(lambda b: b[..., 0] * 5 - 2, image, 16)
    with pytest.raises(UserError, match="shape"):
        predict_tiled(lambda b: b[:, :8, :8, 0], image, 16)
    assert predict_tiled(lambda b: b * 0 + 0.5, image, 16).shape == (40, 40)  # (B,t,t,1) is accepted
    with pytest.raises(UserError, match="overlap"):
        predict_tiled(pointwise, image, 16, overlap=16)


def test_predict_volume():
    volume = RNG.normal(size=(3, 50, 41)).astype(np.float32)
    out = predict_volume(pointwise, volume, 32)
    assert out.shape == (3, 50, 41) and out.dtype == np.float32
    np.testing.assert_allclose(out, pointwise(volume[..., None]), rtol=1e-6, atol=1e-7)


def test_isbi_tiff_round_trip(tmp_path):
    probs = RNG.random((3, 20, 30))
    path = tmp_path / "test-probabilities.tif"
    write_isbi_tiff(path, probs)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3
        back = tif.asarray()
    assert back.dtype == np.float32 and back.shape == (3, 20, 30)
    np.testing.assert_array_equal(back, probs.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


@pytest.mark.parametrize("probs, message", [(np.full((2, 4, 4), 1.5), r"\[0, 1\]"),
                                            (np.full((2, 4, 4), np.nan), r"\[0, 1\]"),
                                            (np.ones((2, 4, 4), np.uint8), "dtype"),
                                            (np.ones(4), "shape")])
def test_isbi_tiff_rejects_bad_probabilities(tmp_path, probs, message):
    with pytest.raises(UserError, match=message):
        write_isbi_tiff(tmp_path / "out.tif", probs)
    assert not list(tmp_path.iterdir())


def test_class_csv(tmp_path):
    path = tmp_path / "classes.csv"
    write_class_csv(path, [[0.1, 0.9], [0.7, 0.3]], ["cat", "dog"])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["index", "predicted", "p_cat", "p_dog"], ["0", "dog", "0.100000", "0.900000"],
                    ["1", "cat", "0.700000", "0.300000"]]
    with pytest.raises(UserError, match=r"\(N,3\)"):
        write_class_csv(path, [[0.1, 0.9]], ["a", "b", "c"])


def test_read_input_volume(tmp_path):
    stack = RNG.integers(0, 65535, (4, 10, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(read_input_volume(tmp_path / "stack.tif"), stack)
    tifffile.imwrite(tmp_path / "slice.tif", stack[0, :, :].astype(np.uint8))
    assert read_input_volume(tmp_path / "slice.tif").shape == (1, 10, 12)


def test_pixels_are_mapped_onto_the_type_the_model_takes():
    wide = np.array([0, 257, 32896, 65535], np.uint16)
    assert as_pixel_type(wide, "uint8").tolist() == [0, 1, 128, 255]
    assert as_pixel_type(np.array([0, 1, 255], np.uint8), "uint16").tolist() == [0, 257, 65535]
    same = np.arange(5, dtype=np.uint8)
    assert as_pixel_type(same, "uint8") is same


def test_read_isbi_volume(data_dir):
    volume = read_input_volume(data_dir / "isbi2012" / "train-volume.tif")
    assert volume.shape == (30, 512, 512) and volume.dtype == np.uint8


def test_read_input_volume_rejects_bad_files(tmp_path):
    (tmp_path / "notes.tif").write_text("not an image")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((2, 4, 4), np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 4, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(tmp_path / "4d.tif", np.zeros((2, 3, 4, 4), np.uint8), photometric="minisblack")
    Image.new("L", (4, 4)).save(tmp_path / "image.png")
    for name, message in [("missing.tif", "does not exist"), ("notes.tif", "not a readable TIFF"),
                          ("image.png", "not a readable TIFF"), ("float.tif", "pixel type"),
                          ("rgb.tif", "colour"), ("4d.tif", "shape")]:
        with pytest.raises(UserError, match=message):
            read_input_volume(tmp_path / name)


def test_tsne_plot(tmp_path):
    labels = np.repeat(np.arange(10), 20)
    features = RNG.normal(size=(200, 16)) + 4 * np.eye(16)[labels]
    out = tmp_path / "tsne.png"
    xy = plot_tsne(features, labels, out, "digits")
    assert xy.shape == (200, 2)
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 300
    with pytest.raises(UserError, match="label"):
        plot_tsne(features, labels[:10], out, "digits")
