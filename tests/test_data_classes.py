"""`pack classes`: one sub-folder of images per class, on trees the tests write (Pillow, tifffile) and on
the real MNIST digits written out as PNG files, trained on and predicted with."""
import csv
import json

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from hpctrain.data import classes, describe, mnist
from test_train import cnn_job, metrics_rows

from conftest import assert_user_error, run_hpctrain

H, W = 12, 10
# cnn_job's settings with more steps (2 x 50 of 32 digits) for both runs of a comparison: its default
# 2 x 15 reaches only ~0.83, where two runs differ by more than the few points compared.
TRAIN = {"steps_per_epoch": 50}


def grey(seed, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, (H, W), dtype=dtype)


def write(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, pixels)
    else:
        Image.fromarray(pixels).save(path)  # (H, W, 2) is grey+alpha, (H, W, 3) RGB
    return path


def two_classes(root):
    for name in ("a", "b"):
        for i in (1, 2):
            write(root / name / f"{i}.png", grey(i))
    return root


# ---------------------------------------------------------------- packing

@pytest.mark.fast
def test_a_tree_of_mixed_modes_packs_by_sorted_class_then_natural_file_order(tmp_path):
    root = tmp_path / "tree"
    modes = [lambda g: g, lambda g: np.dstack([g, np.full_like(g, 255)]), lambda g: np.dstack([g] * 3)]
    names = {"dog": ["img10.png", "img2.png", "img1.png"], "cat": ["b.png", "a.png"], "bird": ["x1.png", "x0.png"]}
    pixels = {}
    for c, files in names.items():
        for name in files:
            pixels[c, name] = grey(len(pixels))
            write(root / c / name, modes[len(pixels) % 3](pixels[c, name]))
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # dot-files are skipped
    (root / ".thumbnails").mkdir()
    (root / "README.txt").write_text("digits\n")  # other files in root are ignored
    order = [("bird", "x0.png"), ("bird", "x1.png"), ("cat", "a.png"), ("cat", "b.png"),
             ("dog", "img1.png"), ("dog", "img2.png"), ("dog", "img10.png")]

    out = classes.pack(tmp_path / "out.h5", root=root)
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["class_names"]) == json.loads(f.attrs["label_values"]) == ["bird", "cat", "dog"]
        assert f.attrs["kind"] == "classification" and f["labels"].dtype == np.uint8
        assert f["labels"][()].tolist() == [0, 0, 1, 1, 2, 2, 2]
        assert np.array_equal(f["images"][()], np.stack([pixels[key] for key in order]))
        assert len(f["splits/holdout/val"]) == 1 and len(f["splits/holdout/train"]) == 6
        conversions = json.loads(f.attrs["conversions"])["images"]
        assert sum(conversions.values()) == 7
        assert "grey+alpha 8-bit -> grey 8-bit (opaque alpha dropped)" in conversions
        assert "RGB 8-bit -> grey 8-bit (equal channels)" in conversions
        sources = json.loads(f.attrs["sources"])
        assert [(s["name"], s["files"]) for s in sources] == [(str(root / c), n) for c, n in
                                                             (("bird", 2), ("cat", 2), ("dog", 3))]
    text = describe.describe(out)
    for line in ("0 bird: 28.6 %", "1 cat: 28.6 %", "2 dog: 42.9 %"):
        assert line in text


@pytest.mark.fast
def test_a_16_bit_tiff_makes_the_layout_16_bit(tmp_path):
    deep, flat = grey(1, np.uint16), grey(2)
    write(tmp_path / "tree" / "deep" / "1.tif", deep)
    write(tmp_path / "tree" / "flat" / "1.png", flat)
    with h5py.File(classes.pack(tmp_path / "out.h5", root=tmp_path / "tree", compression="gzip"), "r") as f:
        assert f["images"].dtype == np.uint16 and f["images"].compression == "gzip"
        assert np.array_equal(f["images"][0], deep) and np.array_equal(f["images"][1], flat.astype(np.uint16) * 257)


def test_pack_and_inspect_through_the_command(tmp_path):
    out = tmp_path / "out.h5"
    proc = run_hpctrain("pack", "classes", "--root", two_classes(tmp_path / "tree"), "-o", out, "--channels", "3",
                        check=True)
    assert "classification, 4 samples of 12x10x3 uint8" in proc.stdout
    shown = run_hpctrain("inspect", out, check=True).stdout
    assert "0 a: 50.0 %" in shown and "1 b: 50.0 %" in shown


# ---------------------------------------------------------------- bad input

def _truncated_png(root):
    two_classes(root)
    data = write(root / "b" / "bad.png", grey(3)).read_bytes()
    (root / "b" / "bad.png").write_bytes(data[:60])


BAD = {  # case: (make the tree under root, fragments of the message; {root} is the root)
    "missing": (lambda root: None, ["{root}: no such folder"]),
    "a file": (lambda root: root.write_text("x"), ["{root}: not a folder"]),
    "no sub-folders": (lambda root: write(root / "1.png", grey(1)), ["{root} has no sub-folders"]),
    "one class": (lambda root: write(root / "a" / "1.png", grey(1)), ["one class folder (a)"]),
    "257 classes": (lambda root: [write(root / f"c{i}" / "1.png", grey(1)) for i in range(257)],
                    ["257 class folders"]),
    "empty class": (lambda root: (two_classes(root) / "c").mkdir(), ["class folder {root}/c has no images"]),
    "not an image": (lambda root: (two_classes(root) / "b" / "notes.txt").write_text("x"),
                     ["class folder {root}/b", "not a PNG or TIFF file: notes.txt"]),
    "a folder in a class": (lambda root: write(two_classes(root) / "b" / "more" / "1.png", grey(1)),
                            ["not a PNG or TIFF file: more/"]),
    "image in root": (lambda root: write(two_classes(root) / "stray.png", grey(1)),
                      ["images next to its class folders", "stray.png"]),
    "corrupt": (_truncated_png, ["{root}/b/bad.png: not a readable image"]),
    "sizes differ": (lambda root: Image.new("L", (W, H + 1)).save(two_classes(root) / "b" / "3.png"),
                     ["{root}/b/3.png: 13x10 uint8, but {root}/a/1.png is 12x10 uint8"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_naming_the_offender_and_writes_nothing(tmp_path, case):
    make, fragments = BAD[case]
    root, out = tmp_path / "tree", tmp_path / "out" / "data.h5"
    if case not in ("missing", "a file"):
        root.mkdir()
    make(root)
    out.parent.mkdir()
    proc = run_hpctrain("pack", "classes", "--root", root, "-o", out)
    assert_user_error(proc, *(fragment.format(root=root) for fragment in fragments))
    assert list(out.parent.iterdir()) == []


# ---------------------------------------------------------------- MNIST as a class tree

@pytest.fixture(scope="module")
def digits(data_dir):
    d = data_dir / "mnist"
    return (mnist.read_idx(d / "t10k-images-idx3-ubyte.gz", mnist.IMAGES_MAGIC),
            mnist.read_idx(d / "t10k-labels-idx1-ubyte.gz", mnist.LABELS_MAGIC))


def digit_tree(root, images, labels, names):
    """Writes image i as root/<names[its label]>/<i>.png."""
    for name in names:
        (root / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(root / names[label] / f"{i}.png")
    return root


@pytest.mark.slow
def test_mnist_as_png_folders_trains_as_well_as_from_idx(tmp_path_factory, mnist_h5, digits):
    images, labels = digits
    tmp = tmp_path_factory.mktemp("mnist_classes")
    root = digit_tree(tmp / "t10k", images, labels, [str(d) for d in range(10)])
    out = tmp / "mnist_classes.h5"
    run_hpctrain("pack", "classes", "--root", root, "-o", out, check=True)
    order = np.argsort(labels, kind="stable")  # by class, then file number: the original order
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["labels"][()], labels[order]) and np.array_equal(f["images"][()], images[order])

    accuracy = {}
    for name, data in (("idx", mnist_h5), ("classes", out)):
        run_hpctrain("train", cnn_job(tmp, data, name, **TRAIN), check=True)
        accuracy[name] = metrics_rows(tmp / name)[-1]["val_accuracy"]
    assert accuracy["classes"] >= 0.9 and abs(accuracy["classes"] - accuracy["idx"]) <= 0.03, accuracy


@pytest.mark.slow
def test_predict_names_the_class_folders(tmp_path, digits):
    images, labels = digits
    words = ["zero", "one", "two"]  # sorted: one, two, zero, so class ids are not the digits
    keep = labels < 3
    root = digit_tree(tmp_path / "tree", images[keep], labels[keep], words)
    out = tmp_path / "words.h5"
    run_hpctrain("pack", "classes", "--root", root, "-o", out, check=True)
    run_hpctrain("train", cnn_job(tmp_path, out, "words", **TRAIN), check=True)
    with h5py.File(out, "r") as f:
        val = f["splits/holdout/val"][:100]
        stack, truth = f["images"][val], [sorted(words)[i] for i in f["labels"][val]]
    tifffile.imwrite(tmp_path / "val.tif", stack, photometric="minisblack")
    run_hpctrain("predict", tmp_path / "words", "--input", tmp_path / "val.tif", "-o", tmp_path / "pred.csv",
                 check=True)
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "predicted", "p_one", "p_two", "p_zero"] and len(rows) == 100
    assert sum(row["predicted"] == name for row, name in zip(rows, truth)) >= 90
