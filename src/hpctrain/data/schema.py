"""The hpctrain dataset file: one HDF5 file per dataset, schema version 1.

Datasets
    images              (N, H, W) or (N, H, W, C), uint8 or uint16; one sample per chunk, uncompressed
                        unless packed with --compression gzip|lzf
    masks               (N, H, W) uint8 class ids, one sample per chunk       kind "segmentation"
    labels              (N,) uint8 class ids                                  kind "classification"
    test_images         (M, H', W'[, C]) like images, without targets        optional (the ISBI test volume)
    splits/<name>/train, splits/<name>/val
                        sorted int64 indices into images; train and val are disjoint, val may be empty

Attributes of the root
    schema_version      1
    hpctrain_version    the version that wrote the file
    kind                "segmentation" | "classification"
    class_names         JSON list; class id i is class_names[i]
    label_values        JSON list; label_values[i] is the raw value in the source that became class id i
                        (for thresholded masks the range as text, "< T" and ">= T")
    sources             JSON list of {"name", "sha256", "role"}: the input files (a folder of files is one
                        entry whose sha256 is taken over the sorted "<file sha256>  <file name>" lines)
    class_counts        JSON list; pixels (segmentation) or samples (classification) of each class
    content_sha256      see below
    conversions         optional JSON {role: {"<original mode> -> <stored layout> (what was done)": files}}
                        (packers of image files)
    mask_threshold      optional JSON {"threshold", "pixels", "pixels_between"}: masks thresholded at T,
                        with the count of mask pixels that were neither 0 nor the maximum
    created             ISO 8601 UTC time of packing

Every array above also carries the attribute `sha256`: the hex SHA-256 of its bytes in C order,
little-endian. `content_sha256` is the SHA-256 of the text lines "<path> <dtype> <shape> <sha256>\\n",
e.g. "images uint8 30x512x512 a05d...\\n", for the arrays in this fixed order: images, masks, labels,
test_images (those present), then splits/<name>/train and splits/<name>/val for the split names sorted.

Modules: `dataset` reads and validates a file (open_dataset), `packing` writes one (create, splits,
sources, labels), `verify` re-checks every hash, `describe` summarises a file. This module holds the
format's constants and the helpers they share.
"""
import hashlib

import numpy as np

SCHEMA_VERSION = 1
KINDS = ("segmentation", "classification")
DATA_ARRAYS = ("images", "masks", "labels", "test_images")
TARGETS = {"segmentation": "masks", "classification": "labels"}
COMPRESSIONS = ("gzip", "lzf")
BLOCK_BYTES = 64 << 20  # read or write this much at a time


def content_sha256(file, array_sha256):
    """The file's content hash, from `array_sha256(h5py array)` of each array in the fixed order."""
    lines = []
    for path in array_paths(file):
        array = file[path]
        lines.append(f"{path} {array.dtype.name} {shape_text(array.shape)} {array_sha256(array)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def array_paths(file):
    """The paths of the hashed arrays present in `file`, in the order content_sha256 takes them."""
    paths = [name for name in DATA_ARRAYS if name in file]
    for name in sorted(file.get("splits", {})):
        paths += [f"splits/{name}/train", f"splits/{name}/val"]
    return paths


def little_endian(array):
    """The bytes of `array` in C order, little-endian: what every `sha256` attribute hashes."""
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).data


def sha256(array):
    return hashlib.sha256(little_endian(array)).hexdigest()


def shape_text(shape):
    """(30, 512, 512) -> "30x512x512"."""
    return "x".join(map(str, shape))


def array_text(array):
    """Shape and type, e.g. "30x512x512 uint8"."""
    return f"{shape_text(array.shape)} {array.dtype}"


def first_line(error):
    """The first line of an exception's message, or its type when it has none."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def class_counts(targets, classes):
    """The `class_counts` of targets: how often each class id 0..classes-1 occurs. Few classes are counted one
    by one, 25 times faster than a histogram, which converts the array to intp first."""
    if classes <= 16:
        return np.array([np.count_nonzero(targets == c) for c in range(classes)], np.int64)
    return np.bincount(targets.ravel(), minlength=classes)[:classes]
