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
import functools
import sys

import h5py
import numpy as np

from hpctrain import compat
from hpctrain.data import augment as augmentation
from hpctrain.data import schema
from hpctrain.errors import UserError

IN_MEMORY_LIMIT = 1 << 30


def dataset_info(path):
    """kind, image_shape (H, W, C), channels, dtype, num_classes, class_names, count, test_count and
    splits {name: {"train": n, "val": n}}."""
    with schema.open_dataset(path) as ds:
        return _info(ds)


def train_dataset(path, split, *, rank, size, batch_size, seed, tile=None, augment=None,
                  start_epoch=0, start_step=0, in_memory=None):
    """Infinite dataset of batches (x, y) for this rank, and steps_per_epoch (equal on all ranks).

    split e.g. "fold0" (uses splits/fold0/train); tile: random tile x tile crops, None = whole images;
    augment: an AugmentConfig (or a mapping of its fields), None = no augmentation; in_memory: None =
    automatic (below 1 GiB).
    """
    tf = compat.tf()
    with schema.open_dataset(path) as ds:
        info = _info(ds)
        indices = ds.split(split, "train")
    if not (0 <= rank < size and batch_size >= 1 and start_epoch >= 0 and start_step >= 0):
        raise UserError(f"need 0 <= rank < size, batch_size >= 1 and a start >= 0 "
                        f"(got rank {rank}, size {size}, batch {batch_size}, start {start_epoch}/{start_step})")
    steps = len(indices) // size // batch_size
    if steps == 0:
        raise UserError(f"world size x batch larger than the split: {size} x {batch_size} > "
                        f"{len(indices)} training samples in split {split!r}")
    config = augmentation.AugmentConfig.of(augment)
    height, width = info["image_shape"][:2]
    if tile is not None and not 1 <= tile <= min(height, width):
        raise UserError(f"tile {tile} does not fit the {height}x{width} images")
    out_hw = (tile, tile) if tile else (height, width)
    if tile and not config:
        config = augmentation.CROP_ONLY
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
        draws = augmentation.draws(tf.stack([seed, batch["epoch"]]), batch["index"], config, out_hw)
        return {"index": batch["index"], "draws": draws}

    def prepared(batch):
        x, y = _model_inputs(batch, info["kind"])
        if not config:
            return x, y
        segmentation = info["kind"] == "segmentation"
        x, masks = augmentation.transform(x, y if segmentation else None, batch["draws"], config, out_hw)
        return x, masks if segmentation else y

    indices = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch).skip(start_step)
    indices = indices.map(with_draws) if config else indices.map(lambda b: {"index": b["index"]})
    return _finish(source.read(indices).map(prepared, num_parallel_calls=tf.data.AUTOTUNE)), steps


def eval_dataset(path, split, *, batch_size, subset="val", in_memory=None):
    """Finite dataset of batches (x, y) of whole images in index order, without augmentation; the last
    batch may be smaller."""
    tf = compat.tf()
    with schema.open_dataset(path) as ds:
        info = _info(ds)
        indices = ds.split(split, subset)
    if len(indices) == 0:
        raise UserError(f"split {split!r} has no {subset} samples")
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
    with schema.open_dataset(path) as ds:
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
        with schema.open_dataset(path) as ds, tf.device("/CPU:0"):  # host memory, also on GPU machines
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
