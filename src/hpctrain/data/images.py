"""`hpctrain pack images`: a folder (or glob) of PNG/TIFF slices and their masks as a segmentation dataset.

Every image is brought to one pixel layout (`image_files.PixelLayout`: grey or RGB, 8 or 16 bit; opaque
alpha dropped, grey stored as colour made grey, `channels` to force 1 or 3); what was converted is
recorded per original mode (`conversions`). Masks are required, because a file without targets cannot be
trained on: one mask per image, read by `masks.MaskRule` (two-valued, thresholded, or class ids).
Images and masks pair by file stem (slice_3.png with slice_3.tif, or with slice_3_mask.png under
--mask-suffix _mask), never by position alone: a stem without its partner, or two files of one stem, is
refused. `--pair-by order` pairs by position in natural sort order (img2 before img10) for folders whose
names differ on purpose. Samples are stored in the images' natural order, one file in memory at a time.
Images without masks, to predict on, can be added with --test (`test_images`).
"""
import glob
import re
from pathlib import Path

import numpy as np

from hpctrain.atomic import check_new_output
from hpctrain.data import packing, schema
from hpctrain.data.image_files import SUFFIXES, PixelLayout
from hpctrain.data.masks import MaskRule
from hpctrain.errors import UserError


def default_class_names(classes):
    return ["background", "foreground"] if classes == 2 else ["background", *(f"class{i}" for i in range(1, classes))]


def pack(out, *, images, masks, test=None, class_names=None, classes=2, mask_threshold=None, channels=None,
         pair_by="stem", mask_suffix="", force=False, compression=None):
    check_new_output(out, force)
    rule = MaskRule(classes, mask_threshold)
    class_names = class_names or default_class_names(classes)
    if len(class_names) != classes:
        raise UserError(f"{classes} class names are needed, not {len(class_names)} ({','.join(class_names)})")
    pairs = pair(list_files(images), list_files(masks), pair_by, mask_suffix, images, masks)
    image_files, mask_files = [i for i, _ in pairs], [m for _, m in pairs]
    test_files = list_files(test) if test else []
    layout = PixelLayout(image_files + test_files, channels)
    first = layout.read(image_files[0])
    sources = [packing.files_source(str(images), image_files, "images"),
               packing.files_source(str(masks), mask_files, "masks")]
    if test_files:
        sources.append(packing.files_source(str(test), test_files, "test_images"))

    with packing.create(out, kind="segmentation", class_names=list(class_names), label_values=None,
                        sources=sources, splits=packing.holdout_splits(len(image_files)),
                        force=force, compression=compression) as writer:
        writer.create("images", len(image_files), first.shape, first.dtype)
        writer.create("masks", len(mask_files), first.shape[:2], np.uint8)
        for i, (image_file, mask_file) in enumerate(pairs):
            image = first if i == 0 else like(layout.read(image_file), first, image_file, image_files[0])
            writer.append("images", image)
            writer.append("masks", rule.read(mask_file, image.shape[:2]))
        if test_files:
            writer.create("test_images", len(test_files), first.shape, first.dtype)
            for test_file in test_files:
                writer.append("test_images", like(layout.read(test_file, "test_images"), first, test_file,
                                                   image_files[0]))
        writer.meta["label_values"] = rule.label_values(masks)
        writer.meta["conversions"] = {**layout.converted, "masks": rule.converted}
        if (threshold := rule.record()) is not None:
            writer.meta["mask_threshold"] = threshold
    return out


def pair(image_files, mask_files, by="stem", mask_suffix="", images="images", masks="masks"):
    """(image, mask) pairs in the images' natural order: by file stem, a mask's stem being its image's
    followed by `mask_suffix`; or by position (`by="order"`). Anything unpaired is a UserError."""
    if by == "order":
        if len(image_files) != len(mask_files):
            raise UserError(f"{len(image_files)} images ({images}) but {len(mask_files)} masks ({masks})")
        return list(zip(image_files, mask_files))
    if by != "stem":
        raise UserError(f"unknown pairing {by!r} (stem or order)")
    image_of, mask_of, stray = _by_stem(image_files, "images"), {}, []
    for stem, f in _by_stem(mask_files, "masks").items():
        base = stem.removesuffix(mask_suffix)
        if stem.endswith(mask_suffix) and base in image_of:
            mask_of[base] = f
        else:
            stray.append(f.name)
    lonely = [f.name for stem, f in image_of.items() if stem not in mask_of]
    problems = ([f"images without a mask: {few(lonely)}"] if lonely else []) + (
        [f"masks without an image: {few(stray)}"] if stray else [])
    if problems:
        rule = f"its image's stem + {mask_suffix!r}" if mask_suffix else "its image's"
        raise UserError(f"images and masks pair by file stem (a mask's stem is {rule}): {'; '.join(problems)} "
                        "(--mask-suffix, or --pair-by order to pair by position)")
    return [(f, mask_of[stem]) for stem, f in image_of.items()]


def _by_stem(files, what):
    """{stem: file} in the files' order; two files of one stem are refused."""
    found, twice = {}, []
    for f in files:
        if f.stem in found:
            twice.append(f"{found[f.stem].name} and {f.name}")
        found.setdefault(f.stem, f)
    if twice:
        raise UserError(f"{what} of the same stem, which pairing by stem cannot tell apart: {few(twice)}")
    return found


def few(names, shown=3):
    names = list(names)
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def list_files(spec):
    """The PNG/TIFF files of a folder, or those matching a glob, in natural sort order."""
    path = Path(spec)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()]
        if not files:
            raise UserError(f"folder {spec} has no PNG or TIFF files")
    else:
        files = [Path(p) for p in glob.glob(str(spec)) if Path(p).is_file()]
        if not files:
            raise UserError(f"no files match {spec}")
    return sorted(files, key=natural_key)


def natural_key(path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", Path(path).name)]


def like(array, first, path, first_path):
    """`array` (read from `path`) when it has the shape and type of the folder's first image."""
    if array.shape != first.shape or array.dtype != first.dtype:
        raise UserError(f"{path}: {schema.shape_text(array.shape)} {array.dtype}, but {first_path} is "
                        f"{schema.shape_text(first.shape)} {first.dtype} (all images must match)")
    return array
