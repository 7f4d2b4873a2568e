"""`hpctrain pack images`: a folder (or glob) of PNG/TIFF slices and their masks as a segmentation dataset.

Images may be 8- or 16-bit grayscale (an alpha channel is dropped) or RGB (RGBA loses its alpha, palette
images become RGB); all must have the same size, bit depth and channels. Masks are required, because a
file without targets cannot be trained on: one grayscale mask per image, two-valued (0/1 or 0/max) and
stored as class ids 0 (lower value) and 1. Images and masks pair by file stem (slice_3.png with
slice_3.tif, or with slice_3_mask.png under --mask-suffix _mask), never by position alone: a stem without
its partner, or two files of one stem, is refused. `--pair-by order` pairs by position in natural sort
order (img2 before img10) for folders whose names differ on purpose. Samples are stored in the images'
natural order. Images without masks, to predict on, can be added with --test (`test_images`).
"""
import glob
import re
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from hpctrain.atomic import check_new_output
from hpctrain.data import packing, schema
from hpctrain.errors import UserError

SUFFIXES = (".png", ".tif", ".tiff")
DEFAULT_CLASS_NAMES = ("background", "foreground")


def pack(out, *, images, masks, test=None, class_names=DEFAULT_CLASS_NAMES, pair_by="stem", mask_suffix="",
         force=False, compression=None):
    check_new_output(out, force)
    pairs = pair(list_files(images), list_files(masks), pair_by, mask_suffix, images, masks)
    image_files, mask_files = [i for i, _ in pairs], [m for _, m in pairs]
    test_files = list_files(test) if test else []
    if len(class_names) != 2:
        raise UserError(f"two class names are needed, not {len(class_names)}")
    first = read_image(image_files[0])
    sources = [packing.files_source(str(images), image_files, "images"),
               packing.files_source(str(masks), mask_files, "masks")]
    if test_files:
        sources.append(packing.files_source(str(test), test_files, "test_images"))

    with packing.create(out, kind="segmentation", class_names=list(class_names), label_values=None,
                        sources=sources, splits=packing.holdout_splits(len(image_files)),
                        force=force, compression=compression) as writer:
        writer.create("images", len(image_files), first.shape, first.dtype)
        writer.create("masks", len(mask_files), first.shape[:2], np.uint8)
        values = set()
        for image_file, mask_file in zip(image_files, mask_files):
            writer.append("images", _like(read_image(image_file), first, image_file, image_files[0]))
            mask = read_mask(mask_file, first.shape[:2])
            values |= packing.present_values(mask)
            writer.append("masks", (mask != 0).astype(np.uint8))
        writer.meta["label_values"] = packing.binary_values(values, mask.dtype, masks)
        if test_files:
            writer.create("test_images", len(test_files), first.shape, first.dtype)
            for test_file in test_files:
                writer.append("test_images", _like(read_image(test_file), first, test_file, image_files[0]))
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
    problems = ([f"images without a mask: {_few(lonely)}"] if lonely else []) + (
        [f"masks without an image: {_few(stray)}"] if stray else [])
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
        raise UserError(f"{what} of the same stem, which pairing by stem cannot tell apart: {_few(twice)}")
    return found


def _few(names, shown=3):
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


def read_image(path):
    """One slice as (H, W) or (H, W, 3), uint8 or uint16."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                if len(tif.pages) != 1:
                    raise UserError(f"{path}: {len(tif.pages)} pages, expected one slice per file")
                array = tif.pages[0].asarray()
        else:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGBA") if img.mode in ("P", "PA") else img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, tifffile.TiffFileError) as e:
        raise UserError(f"{path}: not a readable image ({schema.first_line(e)})") from None
    if array.ndim == 3 and array.shape[2] in (1, 2):  # grayscale [+ alpha]
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[2] == 4:  # RGBA
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise UserError(f"{path}: {array.shape} pixels, expected a grayscale or RGB image")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize > 1 and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)  # PIL reads 16-bit PNG as int32
    if array.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{path}: {array.dtype} pixels, expected 8- or 16-bit integers")
    return np.ascontiguousarray(array)


def read_mask(path, shape):
    mask = read_image(path)
    if mask.ndim == 3:
        if np.any(mask != mask[..., :1]):
            raise UserError(f"{path}: a mask must be grayscale, this one has colours")
        mask = mask[..., 0]
    if mask.shape != shape:
        raise UserError(f"{path}: mask is {schema.shape_text(mask.shape)}, its image {schema.shape_text(shape)}")
    return mask


def _like(array, first, path, first_path):
    if array.shape != first.shape or array.dtype != first.dtype:
        raise UserError(f"{path}: {schema.shape_text(array.shape)} {array.dtype}, but {first_path} is "
                        f"{schema.shape_text(first.shape)} {first.dtype} (all images must match)")
    return array
