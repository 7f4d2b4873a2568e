"""`hpctrain pack isbi`: the ISBI 2012 EM challenge stacks (multi-page TIFF) as a segmentation dataset.

Labels 0 (membrane) and 255 (cell interior) become class ids 0 and 1, so a model's sigmoid output is
directly the challenge's "probability of non-membrane". Splits: fold0..fold4 validate on 6 consecutive
slices of 30 and train on the other 24; `all` trains on every slice.
"""
from pathlib import Path

import numpy as np
import tifffile

from hpctrain.atomic import check_new_output
from hpctrain.data import packing, schema
from hpctrain.errors import UserError

CLASS_NAMES = ["membrane", "cell"]


def pack(out, *, volume, labels, test=None, force=False, compression=None):
    check_new_output(out, force)
    images = read_stack(volume)
    raw_labels = read_stack(labels)
    if len(raw_labels) != len(images):
        raise UserError(f"{volume} has {len(images)} slices but {labels} has {len(raw_labels)}")
    if raw_labels.shape != images.shape:
        raise UserError(f"{volume} slices are {schema.shape_text(images.shape[1:])} but {labels} slices are "
                        f"{schema.shape_text(raw_labels.shape[1:])}")
    label_values = packing.binary_values(packing.present_values(raw_labels), raw_labels.dtype, labels)
    sources = [packing.file_source(volume, "images"), packing.file_source(labels, "masks")]
    test_images = None
    if test:
        test_images = read_stack(test)
        if test_images.shape[1:] != images.shape[1:] or test_images.dtype != images.dtype:
            raise UserError(f"{test}: {schema.shape_text(test_images.shape)} {test_images.dtype} does not match "
                            f"{volume} ({schema.shape_text(images.shape)} {images.dtype})")
        sources.append(packing.file_source(test, "test_images"))

    with packing.create(out, kind="segmentation", class_names=CLASS_NAMES, label_values=label_values,
                        sources=sources, splits=packing.fold_splits(len(images)),
                        force=force, compression=compression) as writer:
        writer.write("images", images)
        writer.write("masks", (raw_labels != 0).astype(np.uint8))
        if test_images is not None:
            writer.write("test_images", test_images)
    return out


def read_stack(path):
    """A multi-page TIFF as an N x H x W uint8 or uint16 array."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        stack = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable TIFF ({schema.first_line(e)})") from None
    if stack.ndim != 3:
        raise UserError(f"{path}: a {stack.ndim}-D image ({schema.shape_text(stack.shape)}), "
                        "expected a stack of slices N x H x W")
    if stack.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{path}: {stack.dtype} pixels, expected uint8 or uint16")
    return stack
