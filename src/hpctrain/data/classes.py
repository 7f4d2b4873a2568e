"""`hpctrain pack classes`: a classification dataset from one sub-folder of PNG/TIFF images per class (the
layout of Keras' `image_dataset_from_directory`).

Every sub-folder of `root` is a class, named by the folder; classes in sorted order are ids 0, 1, ...
(`class_names`, and `label_values`: the raw value of a class is its folder name). Samples are the classes'
images in that order, each folder's in natural order (img2 before img10), read one at a time. Every image is
brought to one pixel layout (`image_files.PixelLayout`, `channels` to force grey or RGB); what was converted
is recorded (`conversions`). Sources: one entry per class folder. Splits: `holdout` (a fixed seeded fifth
validates) and `all`.

Names starting with a dot (.DS_Store, ._x.png, .ipynb_checkpoints) are skipped everywhere. Anything else
in a class folder that is not a PNG or TIFF file, or is a folder, is refused rather than silently left out;
so is an image directly in `root` (its class cannot be known). Other files in `root` (README, LICENSE)
are ignored.
"""
from pathlib import Path

import numpy as np

from hpctrain.atomic import check_new_output
from hpctrain.data import packing
from hpctrain.data.image_files import SUFFIXES, PixelLayout
from hpctrain.data.images import few, like, natural_key
from hpctrain.errors import UserError

MAX_CLASSES = 256  # labels are uint8


def pack(out, *, root, channels=None, force=False, compression=None):
    check_new_output(out, force)
    folders = class_folders(root)
    files = {folder: class_files(folder) for folder in folders}
    samples = [(path, label) for label, folder in enumerate(folders) for path in files[folder]]
    layout = PixelLayout([path for path, _ in samples], channels)
    first = layout.read(samples[0][0])
    sources = [packing.files_source(str(folder), files[folder], "images") for folder in folders]
    with packing.create(out, kind="classification", class_names=[f.name for f in folders],
                        label_values=[f.name for f in folders], sources=sources,
                        splits=packing.holdout_splits(len(samples)), force=force, compression=compression) as writer:
        writer.create("images", len(samples), first.shape, first.dtype)
        for i, (path, _) in enumerate(samples):
            writer.append("images", first if i == 0 else like(layout.read(path), first, path, samples[0][0]))
        writer.write("labels", np.array([label for _, label in samples], np.uint8))
        writer.meta["conversions"] = dict(layout.converted)
    return out


def class_folders(root):
    """The class sub-folders of `root`, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    loose = sorted((p.name for p in entries if p.is_file() and p.suffix.lower() in SUFFIXES), key=natural_key)
    folders = sorted((p for p in entries if p.is_dir()), key=lambda p: p.name)
    if not folders:
        raise UserError(f"{root} has no sub-folders: it needs one folder of images per class")
    if loose:
        raise UserError(f"{root} holds images next to its class folders, of no class: {few(loose)} "
                        "(move each into the folder of its class)")
    if len(folders) < 2:
        raise UserError(f"{root} has one class folder ({folders[0].name}); classification needs two or more")
    if len(folders) > MAX_CLASSES:
        raise UserError(f"{root} has {len(folders)} class folders; at most {MAX_CLASSES} are supported")
    return folders


def class_files(folder):
    """The PNG/TIFF files of a class folder in natural order; anything else but dot-files is refused."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    other = sorted((p.name + ("/" if p.is_dir() else "") for p in entries
                    if not p.is_file() or p.suffix.lower() not in SUFFIXES), key=natural_key)
    if other:
        raise UserError(f"class folder {folder} holds what is not a PNG or TIFF file: {few(other)}")
    if not entries:
        raise UserError(f"class folder {folder} has no images")
    return sorted(entries, key=natural_key)
