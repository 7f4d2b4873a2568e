"""`pack images` on the folders users have: every image mode in one folder, masks two-valued, anti-aliased
or of class ids, and the bad input each is refused with. Images are written by the tests."""
import json

import h5py
import numpy as np
import png
import pytest
import tifffile
from PIL import Image

from hpctrain.data import describe, image_files, images
from hpctrain.errors import UserError

pytestmark = pytest.mark.fast
H, W = 24, 32


def grey(seed, bits=8):
    top = 255 if bits == 8 else 65535
    return np.random.default_rng(seed).integers(0, top + 1, (H, W), dtype=np.uint8 if bits == 8 else np.uint16)


def write(path, array, mode=None):
    """Writes pixels (H, W[, C]) as PNG (Pillow mode, or pypng for 16-bit colour) or TIFF; a PIL image as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(array, Image.Image):
        array.save(path)
    elif path.suffix == ".tif":
        tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 and array.shape[2] >= 3 else None)
    elif array.dtype == np.uint16 and array.ndim == 3:  # Pillow cannot write 16-bit colour
        planes = array.shape[2]
        with open(path, "wb") as f:
            png.Writer(W, H, bitdepth=16, greyscale=planes < 3, alpha=planes in (2, 4)).write(
                f, array.reshape(H, W * planes).tolist())
    else:
        Image.fromarray(array, mode).save(path)
    return path


def opaque(array):
    return np.dstack([array, np.full(array.shape[:2], np.iinfo(array.dtype).max, array.dtype)])


def mask(seed, high=255):
    m = np.zeros((H, W), np.uint8)
    m[seed % 5:12 + seed % 5, 4:20] = high
    return m


def pack(tmp_path, files, masks=None, **options):
    """Packs {name: (pixels, mode)} with their masks (default: two-valued by name); returns the open file."""
    for name, (array, mode) in files.items():
        write(tmp_path / "img" / name, array, mode)
    for i, name in enumerate(files):
        m, mode = (masks or {}).get(name, (mask(i), None))
        write(tmp_path / "mask" / (name.rsplit(".", 1)[0] + ".png"), m, mode)
    out = images.pack(tmp_path / "out.h5", images=tmp_path / "img", masks=tmp_path / "mask", **options)
    return h5py.File(out, "r")


@pytest.mark.parametrize("mode", ["L", "LA", "RGB=", "RGBA=", "I;16", "LA16", "RGB16=", "RGBA16=", "tif16", "1"])
def test_every_grey_mode_is_stored_as_its_grey_levels(tmp_path, mode):
    bits = 16 if "16" in mode else 8
    g = grey(1, bits) if mode != "1" else (grey(1) > 127).astype(np.uint8)
    arrays = {"L": (g, None), "LA": (opaque(g), "LA"), "RGB=": (np.dstack([g] * 3), None),
              "RGBA=": (opaque(np.dstack([g] * 3)), "RGBA"), "I;16": (g, None), "LA16": (opaque(g), None),
              "RGB16=": (np.dstack([g] * 3), None), "RGBA16=": (opaque(np.dstack([g] * 3)), None),
              "tif16": (g, None), "1": (Image.fromarray(g.astype(bool)), None)}
    with pack(tmp_path, {"a.tif" if mode == "tif16" else "a.png": arrays[mode]}) as f:
        assert f["images"].dtype == g.dtype and np.array_equal(f["images"][0], g)


@pytest.mark.parametrize("bits", [8, 16])
def test_colour_is_kept_as_rgb(tmp_path, bits):
    rgb = np.dstack([grey(1, bits), grey(2, bits), grey(3, bits)])
    with pack(tmp_path, {"a.png": (rgb, None), "b.png": (opaque(rgb), "RGBA" if bits == 8 else None),
                         "c.tif": (rgb, None)}) as f:
        assert f["images"].shape == (3, H, W, 3)
        assert all(np.array_equal(f["images"][i], rgb) for i in range(3))


def test_a_mixed_folder_becomes_one_layout_and_inspect_counts_what_was_converted(tmp_path):
    """The published EM folder: grey+alpha PNGs beside RGBA PNGs whose channels are equal."""
    g = [grey(i) for i in range(4)]
    with pack(tmp_path, {"t0.png": (opaque(g[0]), "LA"), "t1.png": (opaque(np.dstack([g[1]] * 3)), "RGBA"),
                         "t2.png": (g[2], None), "t3.png": (opaque(g[3]), "LA")}) as f:
        assert f["images"].shape == (4, H, W) and np.array_equal(f["images"][()], np.stack(g))
    text = describe.describe(tmp_path / "out.h5")
    assert "2 files: grey+alpha 8-bit -> grey 8-bit (opaque alpha dropped)" in text
    assert "1 file: RGBA 8-bit -> grey 8-bit (opaque alpha dropped, equal channels)" in text
    assert "1 file: grey 8-bit -> grey 8-bit" in text


def test_8_bit_files_join_a_16_bit_folder_scaled_to_its_range(tmp_path):
    a, b = grey(1), grey(2, 16)
    with pack(tmp_path, {"a.png": (a, None), "b.png": (b, None)}) as f:
        assert f["images"].dtype == np.uint16
        assert np.array_equal(f["images"][0], a.astype(np.uint16) * 257) and np.array_equal(f["images"][1], b)


def test_channels_forces_the_layout(tmp_path):
    g, rgb = grey(1), np.dstack([grey(2), grey(3), grey(4)])
    with pack(tmp_path / "one", {"a.png": (g, None), "b.png": (rgb, None)}, channels=1) as f:
        expected = np.rint(rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])).astype(np.uint8)
        assert np.array_equal(f["images"][1], expected) and np.array_equal(f["images"][0], g)
        # the standard weights, as Pillow's own conversion applies them (to rounding)
        assert np.abs(expected.astype(int) - np.asarray(Image.fromarray(rgb).convert("L"), int)).max() <= 1
    with pack(tmp_path / "three", {"a.png": (g, None), "b.png": (rgb, None)}, channels=3) as f:
        assert np.array_equal(f["images"][0], np.dstack([g] * 3)) and np.array_equal(f["images"][1], rgb)
    # A grey file joins a colour first file losslessly; a colour file after grey ones is never made grey unasked.
    with pack(tmp_path / "auto", {"a.png": (rgb, None), "b.png": (g, None)}) as f:
        assert np.array_equal(f["images"][1], np.dstack([g] * 3))
    with pytest.raises(UserError, match=r"b.png: a colour image, but a.png before it is grey: .*--channels 3"):
        pack(tmp_path / "refused", {"a.png": (g, None), "b.png": (rgb, None)})


@pytest.mark.parametrize("where", ["image", "mask"])
def test_an_alpha_channel_that_is_not_opaque_is_refused(tmp_path, where):
    g = opaque(grey(1))
    g[3, 3, 1] = 254
    files = {"a.png": (g if where == "image" else opaque(grey(1)), "LA")}
    masks = {"a.png": (np.dstack([mask(0), g[..., 1]]), "LA")} if where == "mask" else None
    with pytest.raises(UserError, match=r"a.png: 1 pixels are not fully opaque; the alpha channel carries"):
        pack(tmp_path, files, masks)
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("style", ["0/255", "0/1", "grey+alpha", "RGB", "palette", "16-bit"])
def test_two_valued_masks_in_any_mode(tmp_path, style):
    m = mask(0)
    palette = Image.fromarray(m // 255, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0])
    arrays = {"0/255": (m, None), "0/1": (m // 255, None), "grey+alpha": (opaque(m), "LA"),
              "RGB": (np.dstack([m] * 3), None), "16-bit": (m.astype(np.uint16) * 257, None)}
    arrays["palette"] = (palette, None)
    f = pack(tmp_path, {"a.png": (grey(1), None)}, {"a.png": arrays[style]})
    with f:
        assert np.array_equal(f["masks"][0], m // 255)


def test_anti_aliased_masks_need_a_threshold_and_inspect_records_it(tmp_path):
    soft = mask(0).astype(float)
    soft[:, 10] = 100  # an anti-aliased column
    soft[0, :] = 200
    files = {"a.png": (grey(1), None)}
    with pytest.raises(UserError, match=r"a.png: mask values 0, 100, 200, 255; .*--mask-threshold T"):
        pack(tmp_path / "refused", files, {"a.png": (soft.astype(np.uint8), None)})
    with pack(tmp_path, files, {"a.png": (soft.astype(np.uint8), None)}, mask_threshold=128) as f:
        assert np.array_equal(f["masks"][0], (soft >= 128).astype(np.uint8))
        assert json.loads(f.attrs["label_values"]) == ["< 128", ">= 128"]
        between = int(np.count_nonzero((soft != 0) & (soft != 255)))
        assert json.loads(f.attrs["mask_threshold"]) == {"threshold": 128, "pixels": H * W, "pixels_between": between}
    assert f"masks thresholded at 128: {between} of {H * W} pixels" in describe.describe(tmp_path / "out.h5")


def test_masks_of_class_ids_with_classes(tmp_path):
    ids = np.random.default_rng(3).integers(0, 4, (H, W), dtype=np.uint8)
    palette = Image.fromarray(ids, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    with pack(tmp_path, {"a.png": (grey(1), None), "b.png": (grey(2), None)},
              {"a.png": (ids, None), "b.png": (palette, None)}, classes=4, class_names=["bg", "a", "b", "c"]) as f:
        assert np.array_equal(f["masks"][0], ids) and np.array_equal(f["masks"][1], ids)
        assert json.loads(f.attrs["class_names"]) == ["bg", "a", "b", "c"]
        assert json.loads(f.attrs["class_counts"]) == (2 * np.bincount(ids.ravel(), minlength=4)).tolist()
    with pytest.raises(UserError, match=r"a.png: mask values up to 3, more than --classes 3 allows"):
        images.pack(tmp_path / "x.h5", images=tmp_path / "img", masks=tmp_path / "mask", classes=3)
    with pytest.raises(UserError, match="4 class names are needed, not 2"):
        images.pack(tmp_path / "x.h5", images=tmp_path / "img", masks=tmp_path / "mask", classes=4,
                    class_names=["a", "b"])
    assert not (tmp_path / "x.h5").exists()


def test_masks_of_two_conventions_in_one_folder_are_refused(tmp_path):
    with pytest.raises(UserError, match="some masks are 0/1, others 0/255"):
        pack(tmp_path, {"a.png": (grey(1), None), "b.png": (grey(2), None)},
             {"a.png": (mask(0), None), "b.png": (mask(1) // 255, None)})


def test_a_16_bit_colour_png_keeps_its_16_bits(tmp_path):
    """Pillow would read it as 8 bits."""
    rgb = np.dstack([grey(1, 16), grey(2, 16), grey(3, 16)])
    array, mode = image_files.read(write(tmp_path / "a.png", rgb))
    assert mode == "RGB 16-bit" and array.dtype == np.uint16 and np.array_equal(array, rgb)


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate"])
def test_compressed_tiff_slices_are_packed(tmp_path, compression):
    """LZW and Deflate, as microscopes and Fiji write them (tifffile decodes them through imagecodecs)."""
    g = [grey(1), grey(2)]
    (tmp_path / "img").mkdir()
    for i in range(2):
        write(tmp_path / "mask" / f"s{i}.png", mask(i))
        Image.fromarray(g[i]).save(tmp_path / "img" / f"s{i}.tif", compression=compression)
    with h5py.File(images.pack(tmp_path / "out.h5", images=tmp_path / "img", masks=tmp_path / "mask")) as f:
        assert np.array_equal(f["images"][()], np.stack(g))


def test_a_grey_png_with_a_transparent_colour_is_refused_where_that_colour_occurs(tmp_path):
    """A tRNS chunk makes one grey level transparent: an alpha channel in all but name."""
    g = grey(1)
    Image.fromarray(g).save(tmp_path / "a.png", transparency=int(g[0, 0]))
    with pytest.raises(UserError, match=r"a.png: \d+ pixels are not fully opaque"):
        image_files.PixelLayout([tmp_path / "a.png"]).read(tmp_path / "a.png")
    kept = np.where(g == 7, 8, g).astype(np.uint8)  # no pixel of the transparent level: nothing is lost
    Image.fromarray(kept).save(tmp_path / "b.png", transparency=7)
    assert np.array_equal(image_files.PixelLayout([tmp_path / "b.png"]).read(tmp_path / "b.png"), kept)
