"""tf.data input pipelines over a dataset file: sharded per rank, shuffled per epoch, resumable.

Training order: epoch e is a permutation of the split's indices from the stateless seed [seed, e], the
same on every rank; rank r takes perm[r::size], cut so that every rank yields exactly steps_per_epoch
batches; the pipeline handles whole batches of indices from the start (no per-sample steps).
Augmentation and tile crops use a per-sample seed derived from (seed, e, sample index). So the batches
depend only on (seed, epoch, step, rank, size), and resuming at (epoch, step) skips indices without
reading any data.

Reading: files below IN_MEMORY_LIMIT are read once into memory (per process). Larger ones stream each
sample straight from its HDF5 chunk (one uncompressed chunk per sample) through a memory map of the file,
opened in the process that reads: no h5py handle and no Python run while batches are made, so forked
workers, parallel reads and interpreter exit are all safe (a Python reader inside tf.data, e.g.
tf.numpy_function, can hang the process at exit).
Batches hold the stored types: x [B, h, w, C] integer pixels (e.g. uint8); y [B, h, w, 1] uint8 class
ids (segmentation) or [B] uint8 class ids. The models scale pixels to [0, 1] in their first layer, so
the pipeline does no arithmetic and a batch crosses to the device at a quarter of its float32 size.
"""
import dataclasses
import functools
import sys
from typing import NamedTuple

import h5py
import numpy as np

from hpctrain import compat
from hpctrain.data.augment import AugmentSpec, draws, transform
from hpctrain.data.dataset import open_dataset
from hpctrain.errors import UserError

IN_MEMORY_LIMIT = 1 << 30


def dataset_info(path):
    """kind, image_shape (H, W, C), channels, dtype, num_classes, class_names, count, test_count and
    splits {name: {"train": n, "val": n}}."""
    with open_dataset(path) as ds:
        return _info(ds)


@dataclasses.dataclass(frozen=True)
class Counts:
    """What training on a split can count on, checked by training_counts."""
    info: dict            # dataset_info of the file
    train: int            # training samples of the split
    val: int              # validation samples of the split
    steps_per_epoch: int  # batches per process and epoch, equal on all ranks


def training_counts(path, split, *, size, batch_size, tile=None, kind=None, model=None):
    """Checks that `path` can train on `split` and counts the steps; raises UserError otherwise.

    size x batch_size is the global batch: replicas x per-replica batch, or equally processes x
    per-process batch. tile: the random crop, None = whole images. kind: the kind of dataset that
    `model` (a name, for the message) needs; None = any.
    """
    with open_dataset(path) as ds:
        return _counts(ds, split, size, batch_size, tile, kind, model)


def _counts(ds, split, size, batch_size, tile=None, kind=None, model=None):
    """training_counts of an open Dataset."""
    if size < 1 or batch_size < 1:
        raise UserError(f"need size >= 1 and batch_size >= 1 (got size {size}, batch {batch_size})")
    info, path = _info(ds), ds.path
    if kind is not None and info["kind"] != kind:
        raise UserError(f"{path} holds a {info['kind']} dataset; model {model} needs {kind}")
    train, val = (len(ds.split(split, subset)) for subset in ("train", "val"))  # or "has no split"
    steps = train // (size * batch_size)
    if steps == 0:
        raise UserError(f"world size x batch larger than the split: {size} x {batch_size} > "
                        f"{train} training samples in split {split!r}")
    height, width = info["image_shape"][:2]
    if tile is not None and not 1 <= tile <= min(height, width):
        raise UserError(f"data.tile {tile} does not fit the {height}x{width} images of {path}")
    return Counts(info, train, val, steps)


class ValidationPlan(NamedTuple):
    steps: int    # validation steps of each process
    used: int     # val samples scored in all (n, or fewer: see validation_plan)
    shards: int   # 1: every process scores all of them; else each process its share


def validation_plan(counts, val_batch, local_replicas, processes=1):
    """How one pass over the split's val samples is spread, val_batch per replica and step. Over several
    processes, each scores an equal share (the backends' metric reductions, means of equal weight or sums,
    are then exact) when the samples split evenly; otherwise every process scores all of them. A process
    with several local replicas (tf.distribute) needs full batches, so it leaves out the last
    share % (val_batch x local_replicas) samples; otherwise the last batch may be smaller."""
    n = counts.val
    shards = processes if processes > 1 and n % processes == 0 else 1
    share = n // shards
    if local_replicas == 1:
        return ValidationPlan(-(-share // val_batch), n, shards)
    steps = share // (val_batch * local_replicas)
    if n and steps == 0:
        raise UserError(f"{share} validation samples cannot fill {local_replicas} replicas x batch {val_batch}")
    return ValidationPlan(steps, steps * val_batch * local_replicas * shards, shards)


def train_dataset(path, split, *, rank, size, batch_size, seed, tile=None, augment=None,
                  start_epoch=0, start_step=0, in_memory=None):
    """Infinite dataset of batches (x, y) for this rank (of `size` processes), and steps_per_epoch
    (equal on all ranks).

    split e.g. "fold0" (uses splits/fold0/train); tile: random tile x tile crops, None = whole images;
    augment: an AugmentSpec, None or disabled = no augmentation; in_memory: None = automatic (below
    1 GiB).
    """
    tf = compat.tf()
    if not (0 <= rank < size and start_epoch >= 0 and start_step >= 0):
        raise UserError(f"need 0 <= rank < size and a start >= 0 "
                        f"(got rank {rank}, size {size}, start {start_epoch}/{start_step})")
    with open_dataset(path) as ds:
        counts = _counts(ds, split, size, batch_size, tile)
        indices = ds.split(split, "train")
    info, steps = counts.info, counts.steps_per_epoch
    if augment is None or not augment.enabled:
        augment = AugmentSpec.crop_only() if tile else None
    height, width = info["image_shape"][:2]
    out_hw = (tile, tile) if tile else (height, width)
    source = _source(path, in_memory)
    start_epoch, start_step = start_epoch + start_step // steps, start_step % steps
    per_epoch = steps * batch_size
    split_indices = tf.constant(indices)
    seed = tf.constant(seed, tf.int64)

    def epoch(e):
        perm = tf.random.experimental.stateless_shuffle(split_indices, tf.stack([seed, e]))
        mine = tf.reshape(perm[rank::size][:per_epoch], [steps, batch_size])
        return tf.data.Dataset.from_tensor_slices({"index": mine, "epoch": tf.fill([steps], e)})

    def with_draws(batch):
        epoch_seed = tf.stack([seed, batch["epoch"]])
        return {"index": batch["index"], "draws": draws(epoch_seed, batch["index"], augment, out_hw)}

    def prepared(batch):
        x, y = _model_inputs(batch, info["kind"])
        if augment is None:
            return x, y
        segmentation = info["kind"] == "segmentation"
        x, masks = transform(x, y if segmentation else None, batch["draws"], augment, out_hw)
        return x, masks if segmentation else y

    indices = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch).skip(start_step)
    indices = indices.map(with_draws) if augment is not None else indices.map(lambda b: {"index": b["index"]})
    return _finish(source.read(indices).map(prepared, num_parallel_calls=tf.data.AUTOTUNE)), steps


def eval_dataset(path, split, *, batch_size, subset="val", in_memory=None, shard=(0, 1)):
    """Finite dataset of batches (x, y) of whole images in index order, without augmentation; the last
    batch may be smaller. shard (index, count): every count-th sample from the index-th on."""
    tf = compat.tf()
    with open_dataset(path) as ds:
        info = _info(ds)
        indices = ds.split(split, subset)
    if len(indices) == 0:
        raise UserError(f"split {split!r} has no {subset} samples")
    index, count = shard
    indices = indices[index::count]
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, not {batch_size}")
    source = _source(path, in_memory)
    batches = tf.data.Dataset.from_tensor_slices({"index": indices}).batch(batch_size)
    return _finish(source.read(batches).map(lambda b: _model_inputs(b, info["kind"]),
                                            num_parallel_calls=tf.data.AUTOTUNE))


# ---------------------------------------------------------------- helpers

def _info(ds):
    images = ds.images
    channels = images.shape[3] if images.ndim == 4 else 1
    return {
        "kind": ds.kind,
        "image_shape": (*images.shape[1:3], channels),
        "channels": channels,
        "dtype": images.dtype.name,
        "num_classes": len(ds.class_names),
        "class_names": list(ds.class_names),
        "class_counts": ds.attr_json("class_counts"),
        "count": len(images),
        "test_count": len(ds.test_images) if ds.test_images is not None else 0,
        "splits": {name: {subset: len(ds.file["splits"][name][subset]) for subset in ("train", "val")}
                   for name in ds.split_names},
    }


def _model_inputs(batch, kind):
    """x [B, H, W, C] pixels; y [B, H, W, 1] class ids (segmentation) or [B] class ids."""
    images, targets = batch["image"], batch["target"]
    x = images[..., None] if images.shape.rank == 3 else images
    return x, targets[..., None] if kind == "segmentation" else targets


def _finish(batches):
    tf = compat.tf()
    options = tf.data.Options()
    options.deterministic = True
    # each rank reads its own shard; tf.distribute must not shard again
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def _source(path, in_memory):
    """Where batches read their samples from: memory, or the file's chunks."""
    with open_dataset(path) as ds:
        if in_memory or (in_memory is None and ds.images.nbytes + ds.targets.nbytes < IN_MEMORY_LIMIT):
            stat = ds.path.stat()
            return _memory_source(ds.path.resolve(), stat.st_mtime_ns, stat.st_size)
        return _MappedSource(ds)


@functools.lru_cache(maxsize=2)
def _memory_source(path, mtime_ns, size):
    return _MemorySource(path)


class _MemorySource:
    """The arrays as tensors, read once and shared by every pipeline over the same unchanged file."""

    def __init__(self, path):
        tf = compat.tf()
        with open_dataset(path) as ds, tf.device("/CPU:0"):  # host memory, also on GPU machines
            self.images, self.targets = tf.constant(ds.images[()]), tf.constant(ds.targets[()])

    def read(self, batches):
        """Adds "image" and "target" to each batch of "index"."""
        tf = compat.tf()

        def read(batch):
            return {**batch, "image": tf.gather(self.images, batch["index"]),
                    "target": tf.gather(self.targets, batch["index"])}

        return batches.map(read, num_parallel_calls=tf.data.AUTOTUNE)


class _MappedSource:
    """Streams samples from the file itself: it is memory-mapped (copy-on-write, so never written) and
    handed to TensorFlow without a copy (DLPack); a sample is the slice of its chunk. The OS reads pages
    on demand and caches them; no h5py and no Python run while batches are made."""

    def __init__(self, ds):
        tf = compat.tf()
        if ds.images.compression or ds.targets.compression:
            raise UserError(f"{ds.path}: compressed files are read into memory, and this one holds "
                            f"{(ds.images.nbytes + ds.targets.nbytes) / 2**30:.1f} GiB; pack it without "
                            "--compression to stream it, or read it into memory (in_memory)")
        with tf.device("/CPU:0"):
            self.file = tf.experimental.dlpack.from_dlpack(np.memmap(ds.path, np.uint8, mode="c").__dlpack__())
        self.images = _SampleTable(ds, ds.images)
        segmentation = ds.kind == "segmentation"
        self.masks = _SampleTable(ds, ds.targets) if segmentation else None
        self.labels = None if segmentation else tf.constant(ds.targets[()])  # small: N bytes

    def read(self, batches):
        """Adds "image" and "target" to each batch of "index"."""
        tf = compat.tf()

        def read(batch):
            i = batch["index"]
            target = self._slices(self.masks, i) if self.masks is not None else tf.gather(self.labels, i)
            return {**batch, "image": self._slices(self.images, i), "target": target}

        return batches.map(read, num_parallel_calls=tf.data.AUTOTUNE)

    def _slices(self, table, indices):
        tf = compat.tf()

        def one(offset):
            data = tf.slice(self.file, offset[None], [table.nbytes])
            if table.dtype != tf.uint8:
                data = tf.bitcast(tf.reshape(data, [-1, table.dtype.size]), table.dtype)
            return tf.reshape(data, table.sample_shape)

        return tf.map_fn(one, tf.gather(table.offsets, indices),
                         fn_output_signature=tf.TensorSpec(table.sample_shape, table.dtype))


class _SampleTable:
    """Where each sample of an uncompressed array lies in the file: one chunk per sample."""

    def __init__(self, ds, array):
        tf = compat.tf()
        name = array.name.lstrip("/")
        nbytes = array.dtype.itemsize * int(np.prod(array.shape[1:]))
        offsets = np.full(len(array), -1, np.int64)

        def visit(chunk):
            if chunk.size == nbytes and not chunk.filter_mask:
                offsets[chunk.chunk_offset[0]] = chunk.byte_offset

        plain = not (array.compression or array.shuffle or array.fletcher32 or array.scaleoffset)
        if plain and array.chunks == (1, *array.shape[1:]):
            array.id.chunk_iter(visit)
        little_endian = array.dtype.itemsize == 1 or (array.id.get_type().get_order() == h5py.h5t.ORDER_LE
                                                      and sys.byteorder == "little")
        if (offsets < 0).any() or not little_endian:
            raise UserError(f"{ds.path}: {name} cannot be streamed (it needs one plain little-endian chunk "
                            "per sample, as hpctrain packs it); read it into memory (in_memory)")
        self.offsets, self.nbytes, self.sample_shape = tf.constant(offsets), nbytes, array.shape[1:]
        self.dtype = tf.as_dtype(array.dtype)
