"""Class ids from mask files (`hpctrain pack images`), in any mode `image_files` reads.

- 2 classes (the default): two-valued masks, 0/1 or 0/max of their bit depth, class 1 the higher value; or,
  with `threshold` T, anti-aliased grey masks, class 1 where the value is >= T.
- N classes: integer or palette masks whose values are the class ids 0..N-1.
Anything else is refused with the option that would take it.
"""
import collections

import numpy as np

from hpctrain.data import image_files, packing, schema
from hpctrain.errors import UserError


class MaskRule:
    def __init__(self, classes=2, threshold=None):
        if classes < 2 or classes > 256:
            raise UserError(f"--classes must be 2..256, not {classes}")
        if threshold is not None and classes != 2:
            raise UserError("--mask-threshold makes two classes; masks of class ids take --classes alone")
        if threshold is not None and threshold < 1:
            raise UserError(f"--mask-threshold must be 1 or more, not {threshold}")
        self.classes, self.threshold = classes, threshold
        self.pairs = set()        # two-valued masks: the (0, high) pairs seen
        self.pixels = self.between = 0  # thresholded masks: all pixels, those not 0 or the maximum
        self.converted = collections.Counter()  # files by original mode

    def read(self, path, shape):
        """The mask's (H, W) uint8 class ids; `shape` is its image's (H, W)."""
        raw, mode = image_files.read(path, palette="index")
        raw, done = image_files.flatten(raw, path)
        self.converted[mode + (f" ({', '.join(done)})" if done else "")] += 1
        if raw.shape[2] != 1:
            raise UserError(f"{path}: a mask must be grey or a palette, this one has colours")
        mask = raw[..., 0]
        if mask.shape != shape:
            raise UserError(f"{path}: mask is {schema.shape_text(mask.shape)}, its image {schema.shape_text(shape)}")
        if self.threshold is not None:
            top = np.iinfo(mask.dtype).max
            if self.threshold > top:
                raise UserError(f"{path}: --mask-threshold {self.threshold} is above the mask's maximum {top}")
            self.pixels += mask.size
            self.between += int(np.count_nonzero((mask != 0) & (mask != top)))
            return (mask >= self.threshold).astype(np.uint8)
        values = sorted(packing.present_values(mask))
        if self.classes > 2:
            if values[-1] >= self.classes:
                raise UserError(f"{path}: mask values up to {values[-1]}, more than --classes {self.classes} "
                                f"allows (class ids 0..{self.classes - 1})")
            return mask.astype(np.uint8)
        packing.binary_values(values, mask.dtype, path, "mask", hint=" (--mask-threshold T for anti-aliased "
                              "masks, --classes N for masks of class ids)")
        if values[-1]:
            self.pairs.add(values[-1])
        return (mask != 0).astype(np.uint8)

    def label_values(self, where):
        """label_values for the file: the raw value (or range) that became each class id."""
        if self.threshold is not None:
            return [f"< {self.threshold}", f">= {self.threshold}"]
        if self.classes > 2:
            return list(range(self.classes))
        if len(self.pairs) > 1:
            raise UserError(f"{where}: some masks are 0/1, others 0/{max(self.pairs)}: one convention per folder")
        return [0, max(self.pairs, default=1)]

    def record(self):
        """What the file's `mask_threshold` attribute says, or None."""
        if self.threshold is None:
            return None
        return {"threshold": self.threshold, "pixels": self.pixels, "pixels_between": self.between}
