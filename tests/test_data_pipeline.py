"""The tf.data pipelines on real data: sharding, shuffling, resuming, streaming, evaluation, bad files."""
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from hpctrain.data import dataset, packing, pipeline, synthetic
from hpctrain.data.augment import AugmentSpec
from hpctrain.errors import UserError


@pytest.fixture(scope="module")
def isbi_arrays(isbi_h5):
    with h5py.File(isbi_h5, "r") as f:
        return f["images"][()], f["masks"][()]


@pytest.fixture(scope="module")
def small_h5(tmp_path_factory):
    """20 synthetic 64 x 64 EM samples (holdout: 16 train, 4 val)."""
    out = tmp_path_factory.mktemp("small") / "small.h5"
    synthetic.pack(out, count=20, size=64, seed=1)
    return out


@pytest.fixture(scope="module")
def gzip_h5(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "small-gzip.h5"
    synthetic.pack(out, count=20, size=64, seed=1, compression="gzip")
    return out


def batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def identify(x, images):
    """The sample index of each image of batch x (the 30 ISBI slices are all different)."""
    index = {image.tobytes(): i for i, image in enumerate(images)}
    return [index[sample[..., 0].tobytes()] for sample in x]


def test_dataset_info(isbi_h5, mnist_h5):
    info = pipeline.dataset_info(isbi_h5)
    assert info["kind"] == "segmentation" and info["image_shape"] == (512, 512, 1) and info["channels"] == 1
    assert info["class_names"] == ["membrane", "cell"] and info["num_classes"] == 2 and info["test_count"] == 30
    assert info["splits"]["fold3"] == {"train": 24, "val": 6} and info["splits"]["all"] == {"train": 30, "val": 0}
    info = pipeline.dataset_info(mnist_h5)
    assert info["kind"] == "classification" and info["image_shape"] == (28, 28, 1) and info["num_classes"] == 10
    assert info["splits"]["holdout"] == {"train": 8000, "val": 2000}


def test_sharding_for_world_sizes_1_to_4(isbi_h5, isbi_arrays):
    images, masks = isbi_arrays
    orders = {}
    for size in (1, 2, 3, 4):
        orders[size] = []
        for rank in range(size):
            ds, steps = pipeline.train_dataset(isbi_h5, "fold0", rank=rank, size=size, batch_size=2, seed=7)
            assert steps == 24 // size // 2
            got = batches(ds, 2 * steps)
            x, y = np.concatenate([b[0] for b in got]), np.concatenate([b[1] for b in got])
            assert x.shape == (4 * steps, 512, 512, 1) and x.dtype == np.uint8 and y.dtype == np.uint8
            ids = identify(x, images)
            assert np.array_equal(y[..., 0], masks[ids])  # each mask travels with its image
            orders[size].append((ids[:2 * steps], ids[2 * steps:]))  # epochs 0 and 1
        for epoch in (0, 1):  # disjoint, complete, equally long
            assert sorted(i for rank in orders[size] for i in rank[epoch]) == list(range(6, 30))
        assert orders[size][0][0] != orders[size][0][1]  # reshuffled every epoch
    for size in (2, 3, 4):  # rank r takes perm[r::size] of one permutation shared by all ranks
        for rank in range(size):
            assert orders[size][rank][0] == orders[1][0][0][rank::size]
    again, _ = pipeline.train_dataset(isbi_h5, "fold0", rank=1, size=3, batch_size=2, seed=7)
    assert identify(np.concatenate([b[0] for b in batches(again, 4)]), images) == list(orders[3][1][0])
    other, _ = pipeline.train_dataset(isbi_h5, "fold0", rank=0, size=1, batch_size=2, seed=8)
    assert identify(np.concatenate([b[0] for b in batches(other, 12)]), images) != list(orders[1][0][0])


def test_uneven_shards_are_cut_to_equal_length(isbi_h5, isbi_arrays):
    seen = []
    for rank in range(4):  # 30 slices, 4 ranks x batch 4: 7 per rank, cut to one batch of 4
        ds, steps = pipeline.train_dataset(isbi_h5, "all", rank=rank, size=4, batch_size=4, seed=1)
        assert steps == 1
        seen += identify(batches(ds, 1)[0][0], isbi_arrays[0])
    assert len(seen) == len(set(seen)) == 16


@pytest.mark.parametrize("in_memory", [True, False])
def test_resume_gives_the_batches_of_continuing(small_h5, in_memory):
    kw = dict(rank=1, size=2, batch_size=3, seed=5, tile=40,
              augment=AugmentSpec(enabled=True, elastic=True, elastic_sigma=16), in_memory=in_memory)
    ds, steps = pipeline.train_dataset(small_h5, "holdout", **kw)
    assert steps == 2  # 16 samples / 2 ranks / batch 3
    continued = batches(ds, 3 * steps)
    for start in ({"start_epoch": 1, "start_step": 1}, {"start_epoch": 0, "start_step": steps + 1}):
        resumed, _ = pipeline.train_dataset(small_h5, "holdout", **kw, **start)
        for (x, y), (cx, cy) in zip(batches(resumed, 3), continued[steps + 1:], strict=True):
            assert np.array_equal(x, cx) and np.array_equal(y, cy)
    assert continued[0][0].shape == (3, 40, 40, 1)
    assert not np.array_equal(continued[0][0], continued[steps][0])


@pytest.fixture(scope="module")
def rgb16_h5(small_h5, tmp_path_factory):
    """The small samples as 16-bit RGB images."""
    with h5py.File(small_h5, "r") as f:
        images, masks = f["images"][()].astype(np.uint16) * 257, f["masks"][()]
    out = tmp_path_factory.mktemp("rgb16") / "rgb16.h5"
    with packing.create(out, kind="segmentation", class_names=["membrane", "cell"], label_values=[0, 1], sources=[],
                        splits=packing.holdout_splits(20)) as writer:
        writer.write("images", np.stack([images, 65535 - images, images // 2], axis=-1))
        writer.write("masks", masks)
    return out


@pytest.mark.parametrize("rgb16", [False, True])
def test_streaming_reads_what_memory_holds(small_h5, rgb16_h5, rgb16):
    path = rgb16_h5 if rgb16 else small_h5
    kw = dict(rank=0, size=1, batch_size=4, seed=2, tile=48)
    memory, _ = pipeline.train_dataset(path, "holdout", in_memory=True, **kw)
    streamed, _ = pipeline.train_dataset(path, "holdout", in_memory=False, **kw)
    for (x, y), (sx, sy) in zip(batches(memory, 5), batches(streamed, 5)):
        assert np.array_equal(x, sx) and np.array_equal(y, sy)
    with h5py.File(path, "r") as f:
        images, masks = f["images"][()], f["masks"][()]
    for in_memory in (True, False):
        got = list(pipeline.eval_dataset(path, "all", batch_size=6, subset="train", in_memory=in_memory)
                   .as_numpy_iterator())
        x, y = np.concatenate([b[0] for b in got]), np.concatenate([b[1] for b in got])
        assert x.dtype == images.dtype and np.array_equal(x, images if rgb16 else images[..., None])
        assert np.array_equal(y[..., 0], masks)


def test_compressed_files_are_read_into_memory(small_h5, gzip_h5):
    kw = dict(rank=0, size=1, batch_size=4, seed=2)
    plain, _ = pipeline.train_dataset(small_h5, "holdout", **kw)
    compressed, _ = pipeline.train_dataset(gzip_h5, "holdout", **kw)
    for (x, y), (cx, cy) in zip(batches(plain, 4), batches(compressed, 4)):
        assert np.array_equal(x, cx) and np.array_equal(y, cy)
    with pytest.raises(UserError, match="compressed files are read into memory"):
        pipeline.train_dataset(gzip_h5, "holdout", in_memory=False, **kw)


def test_tiles_are_windows_of_their_sample(small_h5):
    with h5py.File(small_h5, "r") as f:
        images, masks = f["images"][()], f["masks"][()]
    windows = sliding_window_view(images, (24, 24), axis=(1, 2))  # [N, 41, 41, 24, 24]
    ds, _ = pipeline.train_dataset(small_h5, "all", rank=0, size=1, batch_size=10, seed=3, tile=24)
    offsets = set()
    for x, y in batches(ds, 2):
        for tile, mask in zip(x[..., 0], y[..., 0]):
            i, r, c = np.argwhere((windows == tile).all(axis=(3, 4)))[0]
            assert np.array_equal(mask, masks[i, r:r + 24, c:c + 24])
            offsets.add((r, c))
    assert len(offsets) > 10  # random places, not one fixed crop


def test_eval_dataset_is_ordered_and_whole(isbi_h5, isbi_arrays, mnist_h5):
    images, masks = isbi_arrays
    got = list(pipeline.eval_dataset(isbi_h5, "fold2", batch_size=4).as_numpy_iterator())
    assert [len(x) for x, _ in got] == [4, 2]
    x, y = np.concatenate([b[0] for b in got]), np.concatenate([b[1] for b in got])
    assert np.array_equal(x[..., 0], images[12:18])
    assert np.array_equal(y[..., 0], masks[12:18])

    with h5py.File(mnist_h5, "r") as f:
        digits, labels, val = f["images"][()], f["labels"][()], f["splits/holdout/val"][()]
    got = list(pipeline.eval_dataset(mnist_h5, "holdout", batch_size=512).as_numpy_iterator())
    assert [len(x) for x, _ in got] == [512, 512, 512, 464]
    x, y = np.concatenate([b[0] for b in got]), np.concatenate([b[1] for b in got])
    assert x.shape == (2000, 28, 28, 1) and x.dtype == y.dtype == np.uint8
    assert np.array_equal(x[..., 0], digits[val])
    assert np.array_equal(y, labels[val])


def test_classification_batches(mnist_h5):
    with h5py.File(mnist_h5, "r") as f:
        labels, train = f["labels"][()], f["splits/holdout/train"][()]
    ds, steps = pipeline.train_dataset(mnist_h5, "holdout", rank=0, size=1, batch_size=1000, seed=0)
    assert steps == 8
    y = np.concatenate([b[1] for b in batches(ds, steps)])
    assert y.dtype == np.uint8 and np.array_equal(np.bincount(y), np.bincount(labels[train]))


def test_requests_that_cannot_be_met(isbi_h5):
    cases = [
        (dict(split="fold0", rank=0, size=4, batch_size=7), "world size x batch larger than the split: 4 x 7 > 24"),
        (dict(split="fold9", rank=0, size=1, batch_size=1),
         f"{isbi_h5} has no split 'fold9' (it has all, fold0, fold1"),
        (dict(split="fold0", rank=2, size=2, batch_size=1), "rank < size"),
        (dict(split="fold0", rank=0, size=1, batch_size=0), "batch_size >= 1"),
        (dict(split="fold0", rank=0, size=1, batch_size=1, tile=600),
         f"data.tile 600 does not fit the 512x512 images of {isbi_h5}"),
    ]
    for kw, message in cases:
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            pipeline.train_dataset(isbi_h5, seed=0, **kw)
    with pytest.raises(UserError, match="split 'all' has no val samples"):
        pipeline.eval_dataset(isbi_h5, "all", batch_size=1)


def test_training_counts_check_a_request_once(isbi_h5, mnist_h5):
    counts = pipeline.training_counts(isbi_h5, "fold0", size=2, batch_size=5, tile=128, kind="segmentation",
                                      model="unet")
    assert (counts.train, counts.val, counts.steps_per_epoch) == (24, 6, 2)
    assert counts.info == pipeline.dataset_info(isbi_h5)
    for size, batch in ((1, 12), (2, 6), (3, 4), (4, 3)):  # replicas x batch or processes x process batch
        assert pipeline.training_counts(isbi_h5, "fold0", size=size, batch_size=batch).steps_per_epoch == 2
    _, steps = pipeline.train_dataset(isbi_h5, "fold0", rank=1, size=3, batch_size=4, seed=0)
    assert steps == 2
    cases = [  # the messages the README quotes
        (dict(split="holdout", kind="segmentation", model="unet"),
         f"{mnist_h5} holds a classification dataset; model unet needs segmentation"),
        (dict(split="fold9", kind="classification", model="lenet5"),
         f"{mnist_h5} has no split 'fold9' (it has all, holdout)"),
        (dict(split="holdout", size=2, batch_size=4001),
         "world size x batch larger than the split: 2 x 4001 > 8000 training samples in split 'holdout'"),
        (dict(split="holdout", tile=32), f"data.tile 32 does not fit the 28x28 images of {mnist_h5}"),
    ]
    for kw, message in cases:
        with pytest.raises(UserError) as raised:
            pipeline.training_counts(mnist_h5, **{"size": 1, "batch_size": 1, **kw})
        assert str(raised.value) == message


def test_validation_plan(isbi_h5, mnist_h5):
    plan = pipeline.validation_plan
    fold = pipeline.training_counts(isbi_h5, "fold0", size=1, batch_size=1)  # 6 val samples
    assert plan(fold, 1, 1) == (6, 6, 1)  # one whole slice per step
    assert plan(fold, 4, 1) == (2, 6, 1)  # the last batch is smaller
    assert plan(fold, 1, 4) == (1, 4, 1)  # several local replicas: full batches only
    assert plan(fold, 2, 3) == (1, 6, 1)
    with pytest.raises(UserError, match=r"^6 validation samples cannot fill 4 replicas x batch 2$"):
        plan(fold, 2, 4)
    assert plan(fold, 1, 1, processes=2) == (3, 6, 2)  # an equal share each
    assert plan(fold, 1, 1, processes=3) == (2, 6, 3)
    assert plan(fold, 1, 1, processes=4) == (6, 6, 1)  # 6 do not split over 4: each scores all
    assert plan(fold, 1, 3, processes=2) == (1, 6, 2)  # 3 per process fill its 3 replicas
    everything = pipeline.training_counts(isbi_h5, "all", size=1, batch_size=1)  # no val samples
    assert plan(everything, 1, 1) == plan(everything, 2, 4) == (0, 0, 1)
    holdout = pipeline.training_counts(mnist_h5, "holdout", size=1, batch_size=1)
    assert plan(holdout, 512, 1) == (4, 2000, 1)
    assert plan(holdout, 512, 1, processes=4) == (1, 2000, 4)


def test_validation_shards_partition_the_split(isbi_h5):
    whole = np.concatenate([x for x, _ in pipeline.eval_dataset(isbi_h5, "fold0", batch_size=4).as_numpy_iterator()])
    shares = [np.concatenate([x for x, _ in pipeline.eval_dataset(isbi_h5, "fold0", batch_size=4, shard=(i, 3))
                              .as_numpy_iterator()]) for i in range(3)]
    assert [len(s) for s in shares] == [2, 2, 2]
    np.testing.assert_array_equal(np.stack(shares, 1).reshape(whole.shape), whole)  # every count-th sample


BROKEN = {  # name: (change to a valid file, message)
    "newer schema": (lambda f: f.attrs.modify("schema_version", 2), "schema_version 2, this hpctrain reads version 1"),
    "no schema": (lambda f: f.attrs.__delitem__("schema_version"), "not an hpctrain dataset"),
    "no masks": (lambda f: f.__delitem__("masks"), "masks is missing"),
    "fewer masks": (lambda f: (f.__delitem__("masks"), f.create_dataset("masks", (19, 64, 64), "u1")),
                    "masks must be 20x64x64 uint8 to match images, not 19x64x64 uint8"),
    "float images": (lambda f: (f.__delitem__("images"), f.create_dataset("images", (20, 64, 64), "f4")),
                     "images must be N x H x W [x C] uint8 or uint16"),
    "split out of range": (lambda f: (f.__delitem__("splits/holdout/val"),
                                      f.create_dataset("splits/holdout/val", data=np.array([3, 20]))),
                           "splits/holdout/val has indices outside 0..19"),
    "unknown kind": (lambda f: f.attrs.modify("kind", "detection"), "unknown kind 'detection'"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_files_that_break_the_schema_are_refused(tmp_path, small_h5, case):
    change, message = BROKEN[case]
    broken = tmp_path / "broken.h5"
    shutil.copy(small_h5, broken)
    with h5py.File(broken, "r+") as f:
        change(f)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")) as raised:
        dataset.open_dataset(broken)
    assert str(broken) in str(raised.value)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        pipeline.train_dataset(broken, "holdout", rank=0, size=1, batch_size=2, seed=0)


def test_files_that_are_not_datasets_are_refused(tmp_path, small_h5):
    truncated, text, plain = tmp_path / "truncated.h5", tmp_path / "text.h5", tmp_path / "plain.h5"
    truncated.write_bytes(small_h5.read_bytes()[:5000])
    text.write_text("images")
    with h5py.File(plain, "w") as f:
        f["images"] = np.zeros((2, 4, 4), np.uint8)
    for path, message in ((truncated, "not a readable HDF5 file"), (text, "not a readable HDF5 file"),
                          (plain, "not an hpctrain dataset"), (tmp_path / "none.h5", "no such file")):
        with pytest.raises(UserError, match=message):
            pipeline.dataset_info(path)


def test_a_process_exits_with_a_streaming_iterator_alive(small_h5):
    script = ("import sys; from hpctrain.data import pipeline, augment\n"
              "ds, _ = pipeline.train_dataset(sys.argv[1], 'all', rank=0, size=1, batch_size=4, seed=0, tile=32,\n"
              "                               augment=augment.AugmentSpec(enabled=True), in_memory=False)\n"
              "it = iter(ds)\n"
              "for _ in range(20): next(it)\n"
              "print('read')\n")
    proc = subprocess.run([sys.executable, "-c", script, str(small_h5)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "read\n", proc.stderr[-2000:]
