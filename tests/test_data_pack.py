"""Packers, `inspect` and `verify` through the real command, on the repository's real data."""
import gzip
import json
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from hpctrain.data import packing, schema, synthetic

from conftest import DATA, VENV_BIN, assert_user_error, run_hpctrain

ISBI_SHA256 = {  # data/README.md
    "train-volume.tif": "a05df637d576b2387966b7323a34e90e2cdbf86dcaeee86c44d1fd2d616be489",
    "train-labels.tif": "9a9f1056ffd8bac61060b58dc84ad40295c02fc5ff15e68ddfc2f12d211c3dcf",
    "test-volume.tif": "046fbb869a953f1ffa63a9722849fe0aa693ad7a21aa9278a2bff2397d00b16f",
}


@pytest.fixture(scope="module")
def isbi(data_dir):
    return {name: tifffile.imread(data_dir / "isbi2012" / f"{name}.tif")
            for name in ("train-volume", "train-labels", "test-volume")}


def read_idx(path):
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)


def only_files(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- round trips

def test_isbi_round_trip(tmp_path, data_dir, isbi):
    out = tmp_path / "isbi.h5"
    d = data_dir / "isbi2012"
    proc = run_hpctrain("pack", "isbi", "--volume", d / "train-volume.tif", "--labels", d / "train-labels.tif",
                        "--test", d / "test-volume.tif", "-o", out, check=True)
    assert "30 samples of 512x512 uint8" in proc.stdout
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["images"][()], isbi["train-volume"])
        assert np.array_equal(f["masks"][()], isbi["train-labels"] // 255)
        assert np.array_equal(f["test_images"][()], isbi["test-volume"])
        assert f["images"].chunks == (1, 512, 512) and f["images"].compression is None
        attrs = f.attrs
        assert attrs["schema_version"] == 1 and attrs["kind"] == "segmentation"
        assert json.loads(attrs["class_names"]) == ["membrane", "cell"]
        assert json.loads(attrs["label_values"]) == [0, 255]
        assert {s["name"]: s["sha256"] for s in json.loads(attrs["sources"])} == ISBI_SHA256
        for k in range(5):
            val = f[f"splits/fold{k}/val"][()]
            assert np.array_equal(val, np.arange(6 * k, 6 * k + 6))
            assert np.array_equal(np.sort(np.r_[val, f[f"splits/fold{k}/train"][()]]), np.arange(30))
        assert np.array_equal(f["splits/all/train"][()], np.arange(30)) and len(f["splits/all/val"]) == 0
        membrane = json.loads(attrs["class_counts"])[0] / isbi["train-labels"].size
        assert 0.2 < membrane < 0.24  # ~22 % membrane

    verified = run_hpctrain("verify", out, check=True)
    assert verified.stdout.startswith("OK ") and attrs_hash(out) in verified.stdout
    shown = run_hpctrain("inspect", out, check=True).stdout
    for fragment in ("membrane (raw value 0): 22.0 %", "fold0: train 24, val 6", ISBI_SHA256["train-labels.tif"],
                     "test_images: 30x512x512 uint8"):
        assert fragment in shown

    again = tmp_path / "again.h5"  # the content hash does not depend on when or where a file was packed
    run_hpctrain("pack", "isbi", "--volume", d / "train-volume.tif", "--labels", d / "train-labels.tif",
                 "--test", d / "test-volume.tif", "-o", again, check=True)
    assert attrs_hash(again) == attrs_hash(out)


def attrs_hash(path):
    with h5py.File(path, "r") as f:
        return f.attrs["content_sha256"]


def test_mnist_round_trip(tmp_path, data_dir):
    out = tmp_path / "mnist.h5"
    d = data_dir / "mnist"
    run_hpctrain("pack", "mnist", "--images", d / "t10k-images-idx3-ubyte.gz",
                 "--labels", d / "t10k-labels-idx1-ubyte.gz", "-o", out, check=True)
    digits = read_idx(d / "t10k-images-idx3-ubyte.gz").reshape(10000, 28, 28)
    labels = read_idx(d / "t10k-labels-idx1-ubyte.gz")
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["images"][()], digits) and np.array_equal(f["labels"][()], labels)
        assert f.attrs["kind"] == "classification" and json.loads(f.attrs["class_names"]) == list("0123456789")
        train, val = f["splits/holdout/train"][()], f["splits/holdout/val"][()]
        assert (len(train), len(val)) == (8000, 2000)
        assert np.array_equal(np.sort(np.r_[train, val]), np.arange(10000))
        assert json.loads(f.attrs["class_counts"]) == np.bincount(labels).tolist()
    assert run_hpctrain("verify", out).returncode == 0


IMAGE_VARIANTS = {  # name: (suffix, PIL mode or None for tifffile, slice -> stored array)
    "gray8": (".png", "L", lambda s: s),
    "gray16": (".png", "I;16", lambda s: s.astype(np.uint16) * 257),
    "gray+alpha": (".png", "LA", lambda s: s),
    "rgb": (".png", "RGB", lambda s: np.stack([s, 255 - s, s // 2], -1)),
    "rgba": (".png", "RGBA", lambda s: np.stack([s, 255 - s, s // 2], -1)),
    "tiff16": (".tif", None, lambda s: s.astype(np.uint16) * 257),
}


@pytest.mark.parametrize("variant", IMAGE_VARIANTS)
def test_images_round_trip(tmp_path, isbi, variant):
    suffix, mode, expected = IMAGE_VARIANTS[variant]
    volume, labels = isbi["train-volume"][:11, :96, :128], isbi["train-labels"][:11, :96, :128]
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for i in range(11):  # names 1..11: natural order differs from the lexicographic 1, 10, 11, 2, ...
        stored = expected(volume[i])
        path = tmp_path / "img" / f"slice{i + 1}{suffix}"
        if mode is None:
            tifffile.imwrite(path, stored)
        elif mode == "LA":
            Image.fromarray(np.stack([stored, np.full_like(stored, 255)], -1), "LA").save(path)  # opaque
        elif mode == "RGBA":
            Image.fromarray(np.concatenate([stored, np.full_like(stored[..., :1], 255)], -1), "RGBA").save(path)
        else:
            Image.fromarray(stored).save(path)
        Image.fromarray(labels[i]).save(tmp_path / "mask" / f"slice{i + 1}.png")
    out = tmp_path / "images.h5"
    run_hpctrain("pack", "images", "--images", tmp_path / "img", "--masks", tmp_path / "mask" / "*.png",
                 "--class-names", "membrane,cell", "-o", out, check=True)
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["images"][()], np.stack([expected(s) for s in volume]))
        assert np.array_equal(f["masks"][()], labels // 255)
        assert json.loads(f.attrs["class_names"]) == ["membrane", "cell"]
        assert json.loads(f.attrs["label_values"]) == [0, 255]
        assert (len(f["splits/holdout/train"]), len(f["splits/holdout/val"])) == (9, 2)
        [images_source, _] = json.loads(f.attrs["sources"])
        assert images_source["files"] == 11


def test_synthetic_em_is_deterministic_and_em_like(tmp_path):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        run_hpctrain("pack", "synthetic-em", "--count", 6, "--size", 96, "--seed", seed, "-o", out, check=True)
    assert attrs_hash(a) == attrs_hash(b) != attrs_hash(c)
    with h5py.File(a, "r") as f:
        images, masks = f["images"][()], f["masks"][()]
    for i in range(6):  # sample i is regenerated alone from (seed, i)
        image, mask = synthetic.sample(96, 3, i)
        assert np.array_equal(images[i], image) and np.array_equal(masks[i], mask)
    assert set(np.unique(masks)) == {0, 1}
    assert 0.05 < 1 - masks.mean() < 0.45  # membrane fraction
    # membranes are dark: the mean membrane pixel is darker than the mean cell pixel in every sample
    assert all(images[i][masks[i] == 0].mean() + 30 < images[i][masks[i] == 1].mean() for i in range(6))
    assert run_hpctrain("verify", a).returncode == 0


# ---------------------------------------------------------------- verify and inspect catch damage

@pytest.mark.parametrize("compression", [None, "gzip"])
def test_verify_catches_a_flipped_byte(tmp_path, isbi_h5, compression):
    damaged = tmp_path / "damaged.h5"
    if compression:
        run_hpctrain("pack", "synthetic-em", "--count", 4, "--size", 64, "--compression", compression,
                     "-o", damaged, check=True)
    else:
        shutil.copy(isbi_h5, damaged)
    assert run_hpctrain("verify", damaged).returncode == 0
    with h5py.File(damaged, "r") as f:
        chunk = f["images"].id.get_chunk_info(2)
    with open(damaged, "r+b") as f:
        f.seek(chunk.byte_offset + chunk.size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    assert_user_error(run_hpctrain("verify", damaged), str(damaged), "images")


def test_truncated_or_foreign_files_are_refused(tmp_path, isbi_h5):
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(isbi_h5.read_bytes()[:isbi_h5.stat().st_size // 2])
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5")
    for command in ("verify", "inspect"):
        assert_user_error(run_hpctrain(command, truncated), str(truncated), "not a readable HDF5 file")
        assert_user_error(run_hpctrain(command, text), str(text), "not a readable HDF5 file")
        assert_user_error(run_hpctrain(command, tmp_path / "missing.h5"), "no such file")
    old = tmp_path / "old.h5"
    shutil.copy(isbi_h5, old)
    with h5py.File(old, "r+") as f:
        f.attrs["schema_version"] = 7
    assert_user_error(run_hpctrain("verify", old), "schema_version 7")


# ---------------------------------------------------------------- bad input leaves no output

@pytest.fixture
def bad(tmp_path, isbi):
    """Small real inputs, good and bad, in tmp_path/in; outputs go to tmp_path/out."""
    src = tmp_path / "in"
    src.mkdir()
    (tmp_path / "out").mkdir()
    volume, labels = isbi["train-volume"][:4, :64, :64], isbi["train-labels"][:4, :64, :64]
    for name, stack in (("volume", volume), ("labels", labels), ("labels3", labels[:3]),
                        ("labels32", labels[:, :32, :32]), ("grey", np.where(labels > 0, 128, 0))):
        tifffile.imwrite(src / f"{name}.tif", stack.astype(np.uint8), photometric="minisblack")
    tifffile.imwrite(src / "slice.tif", volume[0])
    (src / "text.tif").write_text("hello")
    (src / "empty").mkdir()
    (src / "broken").mkdir()
    (src / "broken" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    images = gzip.decompress((DATA / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (src / "images-idx3-ubyte").write_bytes(images)
    (src / "short-idx3-ubyte").write_bytes(images[:len(images) // 2])
    (src / "labels-idx1-ubyte").write_bytes(labels)
    (src / "5000-labels-idx1-ubyte").write_bytes(labels[:4] + (5000).to_bytes(4, "big") + labels[8:8 + 5000])
    (tmp_path / "out" / "taken.h5").write_bytes(b"already here")
    return tmp_path


BAD_INPUTS = {
    "missing file": (["isbi", "--volume", "in/nope.tif", "--labels", "in/labels.tif"], ["nope.tif", "no such file"]),
    "not a TIFF": (["isbi", "--volume", "in/text.tif", "--labels", "in/labels.tif"],
                   ["text.tif", "not a readable TIFF"]),
    "2-D TIFF": (["isbi", "--volume", "in/slice.tif", "--labels", "in/labels.tif"], ["slice.tif", "2-D image"]),
    "count mismatch": (["isbi", "--volume", "in/volume.tif", "--labels", "in/labels3.tif"], ["4 slices", "has 3"]),
    "shape mismatch": (["isbi", "--volume", "in/volume.tif", "--labels", "in/labels32.tif"], ["64x64", "32x32"]),
    "labels not two-valued": (["isbi", "--volume", "in/volume.tif", "--labels", "in/grey.tif"],
                              ["grey.tif", "two-valued", "128"]),
    "IDX wrong magic": (["mnist", "--images", "in/labels-idx1-ubyte", "--labels", "in/labels-idx1-ubyte"],
                        ["magic number 2049, expected 2051"]),
    "IDX truncated": (["mnist", "--images", "in/short-idx3-ubyte", "--labels", "in/labels-idx1-ubyte"],
                      ["short-idx3-ubyte", "truncated"]),
    "IDX labels swapped": (["mnist", "--images", "in/images-idx3-ubyte", "--labels", "in/images-idx3-ubyte"],
                           ["magic number 2051, expected 2049"]),
    "IDX count mismatch": (["mnist", "--images", "in/images-idx3-ubyte", "--labels", "in/5000-labels-idx1-ubyte"],
                           ["10000 images", "5000 labels"]),
    "empty folder": (["images", "--images", "in/empty", "--masks", "in/empty"], ["in/empty", "no PNG or TIFF"]),
    "unreadable PNG": (["images", "--images", "in/broken", "--masks", "in/broken"], ["a.png", "not a readable image"]),
    "no matching files": (["images", "--images", "in/*.jpg", "--masks", "in/broken"], ["no files match"]),
    "output exists": (["isbi", "--volume", "in/volume.tif", "--labels", "in/labels.tif", "-o", "out/taken.h5"],
                      ["taken.h5 exists", "--force"]),
    "bad synthetic size": (["synthetic-em", "--count", "0", "--size", "64"], ["--count >= 1"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_leaves_no_file(bad, case):
    args, fragments = BAD_INPUTS[case]
    if "-o" not in args:
        args = [*args, "-o", "out/new.h5"]
    assert_user_error(run_hpctrain("pack", *args, cwd=bad), *fragments)
    assert only_files(bad / "out") == ["taken.h5"]
    assert (bad / "out" / "taken.h5").read_bytes() == b"already here"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_interrupted_pack_leaves_no_file(tmp_path, signum, code):
    proc = subprocess.Popen([str(VENV_BIN / "hpctrain"), "pack", "synthetic-em", "--count", "100000",
                             "--size", "128", "-o", str(tmp_path / "big.h5")], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".big.h5.*.tmp")):  # packing has begun
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code, proc.stderr.read()
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr.read()
    assert only_files(tmp_path) == []



# ---------------------------------------------------------------- pairing images and masks

def slices(folder, names, isbi, masks=False):
    """Small real ISBI slices (or their masks) under the given file names."""
    folder.mkdir(parents=True, exist_ok=True)
    stack = isbi["train-labels" if masks else "train-volume"]
    for i, name in enumerate(names):
        Image.fromarray(stack[i, :64, :64]).save(folder / name)
    return folder


def test_images_and_masks_pair_by_stem_never_by_position(tmp_path, isbi):
    """The case found on the earlier code: slice_3 packed against the mask of slice_4, without a word."""
    images = slices(tmp_path / "img", ["slice_1.png", "slice_2.png", "slice_3.png", "slice_10.png"], isbi)
    masks = slices(tmp_path / "mask", ["slice_1.png", "slice_2.png", "slice_4.png", "slice_10.png"], isbi, True)
    out = tmp_path / "out.h5"
    assert_user_error(run_hpctrain("pack", "images", "--images", images, "--masks", masks, "-o", out),
                      "pair by file stem", "images without a mask: slice_3.png",
                      "masks without an image: slice_4.png", "--pair-by order")
    assert not out.exists()
    # By position on purpose: today's pairing, in natural order.
    run_hpctrain("pack", "images", "--images", images, "--masks", masks, "--pair-by", "order", "-o", out, check=True)
    with h5py.File(out, "r") as f:
        assert f["images"].shape == (4, 64, 64)
        assert np.array_equal(f["masks"][2], isbi["train-labels"][2, :64, :64] // 255)  # slice_4.png's mask
    (masks / "slice_10.png").unlink()
    assert_user_error(run_hpctrain("pack", "images", "--images", images, "--masks", masks, "--pair-by", "order",
                                   "-o", tmp_path / "order.h5"), "4 images", "3 masks")


def test_a_mask_suffix_pairs_names_that_differ_by_it(tmp_path, isbi):
    images = slices(tmp_path / "img", ["b.png", "a.tif", "c.png"], isbi)  # stored in natural order: a, b, c
    masks = slices(tmp_path / "mask", ["a_mask.png", "b_mask.png", "c_mask.png"], isbi, True)
    out = tmp_path / "out.h5"
    assert_user_error(run_hpctrain("pack", "images", "--images", images, "--masks", masks, "-o", out),
                      "images without a mask: a.tif, b.png, c.png", "masks without an image: a_mask.png")
    run_hpctrain("pack", "images", "--images", images, "--masks", masks, "--mask-suffix", "_mask", "-o", out,
                 check=True)
    with h5py.File(out, "r") as f:
        # (slice in the image file, slice in its mask file) of a.tif, b.png, c.png, the order stored
        for stored, (image, mask) in enumerate([(1, 0), (0, 1), (2, 2)]):
            assert np.array_equal(f["images"][stored], isbi["train-volume"][image, :64, :64])
            assert np.array_equal(f["masks"][stored], isbi["train-labels"][mask, :64, :64] // 255)


def test_two_files_of_one_stem_are_refused(tmp_path, isbi):
    images = slices(tmp_path / "img", ["a.png", "a.tif", "b.png"], isbi)
    masks = slices(tmp_path / "mask", ["a.png", "b.png"], isbi, True)
    assert_user_error(run_hpctrain("pack", "images", "--images", images, "--masks", masks, "-o", tmp_path / "x.h5"),
                      "images of the same stem", "a.png and a.tif")
    assert not (tmp_path / "x.h5").exists()


def test_bad_image_files_through_the_command_are_one_line_and_exit_2(tmp_path):
    from test_data_images import grey, mask, opaque, write

    write(tmp_path / "img" / "a.png", opaque(grey(1)))
    write(tmp_path / "mask" / "a.png", mask(0))
    out = tmp_path / "out.h5"
    bad = opaque(grey(1))
    bad[0, 0, 1] = 0
    write(tmp_path / "img" / "a.png", bad, "LA")
    assert_user_error(run_hpctrain("pack", "images", "--images", tmp_path / "img", "--masks", tmp_path / "mask",
                                   "-o", out), "a.png: 1 pixels are not fully opaque")
    write(tmp_path / "img" / "a.png", grey(1))
    write(tmp_path / "mask" / "a.png", (mask(0) * 0.5).astype(np.uint8) + mask(0) // 3)
    assert_user_error(run_hpctrain("pack", "images", "--images", tmp_path / "img", "--masks", tmp_path / "mask",
                                   "-o", out), "--mask-threshold")
    assert not out.exists()


@pytest.mark.fast
@pytest.mark.parametrize("values", [[0], [255], [0, 1], [0, 255], [3, 9], [0, 1, 2], [0, 7, 255], list(range(40))])
def test_present_values_and_class_counts_agree_with_a_histogram(values):
    array = np.random.default_rng(0).choice(np.array(values, np.uint8), (31, 17))
    histogram = np.bincount(array.ravel(), minlength=256)
    assert packing.present_values(array) == set(np.flatnonzero(histogram).tolist())
    for classes in (2, 16, 40, 256):
        assert schema.class_counts(array, classes).tolist() == histogram[:classes].tolist()
