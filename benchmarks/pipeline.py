"""Input pipeline throughput on the 512 x 512 ISBI 2012 samples (image + mask), in samples per second:

  (1) raw h5py reads of the same bytes, in a shuffled order: the limit of reading
  (2) hpctrain's train_dataset, without and with augmentation (in memory, and streamed from the file)
  (3) the classic U-Net lecture recipe: PNG folders through tf_keras ImageDataGenerator.flow_from_directory,
      one generator for images and one for masks with the same seed and the same augmentation

  (4) `pack images` of a folder of --pack-files PNG slices of 512 x 512 and their masks (the ISBI slices
      cycled, Pillow's default compression), on one core (packing is single-threaded): files (slices and
      masks) per second, in --pack-rounds rounds side by side with what bounds it on this core: decoding the
      same files alone (Pillow; libpng, which pack uses), and decoding plus the work the format requires
      (the sha256 of each file and of each array, the HDF5 write), without pack's checks; then the peak
      of memory allocated
  (5) `pack synthetic-em`: EM-like samples of 512 x 512 with their masks made per second

and the ratios against the goals (2, no augmentation) >= 0.8 x (1), (2, augmentation) >= 10 x (3) and
(4) >= 500 files/s.
Also shown: (1) plus stacking into the [B, H, W, 1] uint8 batches the pipeline delivers (the models
scale pixels themselves), and the CPU time per sample of each case (the pipeline uses every core, the
other cases one).

    .venv/bin/python benchmarks/pipeline.py [--seconds 6] [--batch 8] [--pack-files 1000] [--pack-rounds 3]
"""
import argparse
import hashlib
import itertools
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py
import imagecodecs
import numpy as np
from PIL import Image

from hpctrain import compat
from hpctrain.data import images, isbi, pipeline, synthetic
from hpctrain.data.augment import AugmentSpec

ROOT = Path(__file__).resolve().parents[1]
RECIPE = AugmentSpec(enabled=True)  # rotation 20, shifts, shear and zoom 0.05, both flips, nearest fill


def measure(batches, batch_size, seconds):
    """(samples per second, CPU milliseconds per sample) drawn from an iterator of batches, after a warm-up."""
    for _ in range(3):
        next(batches)
    count, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        next(batches)
        count += batch_size
    return count / (time.perf_counter() - started), (time.process_time() - cpu) / count * 1000


def raw_reads(path, batch_size, stacked=False):
    with h5py.File(path, "r") as f:
        images, masks = f["images"], f["masks"]
        order = np.random.default_rng(0).permutation(np.resize(np.arange(len(images)), 10**6))
        for start in range(0, len(order), batch_size):
            batch = [(images[i], masks[i]) for i in order[start:start + batch_size]]
            if stacked:  # what the pipeline delivers
                batch = np.stack([x for x, _ in batch])[..., None], np.stack([y for _, y in batch])[..., None]
            yield batch


def hpctrain_batches(path, batch_size, augment, in_memory):
    ds, _ = pipeline.train_dataset(path, "all", rank=0, size=1, batch_size=batch_size, seed=0, augment=augment,
                                   in_memory=in_memory)
    return iter(ds)


def keras_batches(path, folder, batch_size):
    keras = compat.keras()
    with h5py.File(path, "r") as f:
        for name in ("images", "masks"):
            (folder / name / "all").mkdir(parents=True)
            for i, array in enumerate(f[name][()]):
                Image.fromarray(array * (255 if name == "masks" else 1)).save(folder / name / "all" / f"{i}.png")
    recipe = dict(rotation_range=RECIPE.rotation, width_shift_range=RECIPE.shift, height_shift_range=RECIPE.shift,
                  shear_range=RECIPE.shear, zoom_range=RECIPE.zoom, horizontal_flip=True, vertical_flip=True,
                  fill_mode=RECIPE.fill_mode)
    flows = [keras.preprocessing.image.ImageDataGenerator(**recipe).flow_from_directory(
        folder / name, class_mode=None, color_mode="grayscale", target_size=(512, 512), batch_size=batch_size,
        seed=1) for name in ("images", "masks")]
    for pixels, masks in zip(*flows):  # the lecture's adjustData: scale, threshold the mask
        yield pixels / 255, (masks / 255 > 0.5).astype(np.float32)


def pack_speed(path, folder, files, rounds):
    """{case: [files per second of each round]} of packing `files` PNG slices + masks and of its bounds, and
    the peak MB allocated while packing."""
    with h5py.File(path, "r") as f:
        volume, masks = f["images"][()], f["masks"][()] * 255
    for role, stack in (("img", volume), ("mask", masks)):
        (folder / role).mkdir(parents=True)
        for i in range(files):
            Image.fromarray(stack[i % len(stack)]).save(folder / role / f"slice{i}.png")
    pngs = sorted((folder / "img").iterdir()) + sorted((folder / "mask").iterdir())

    def pillow():
        for png in pngs:
            with Image.open(png) as image:
                np.asarray(image)

    def libpng():
        for png in pngs:
            imagecodecs.png_decode(png.read_bytes())

    def required():  # decode, hash the file and the array, write the array: what no packer of this format avoids
        with h5py.File(folder / "bound.h5", "w") as out:
            arrays = [out.create_dataset(role, (files, 512, 512), np.uint8, chunks=(1, 512, 512))
                      for role in ("img", "mask")]
            for i, png in enumerate(pngs):
                data = png.read_bytes()
                array = imagecodecs.png_decode(data)
                hashlib.sha256(data), hashlib.sha256(array)
                arrays[i // files][i % files] = array

    def pack():
        images.pack(folder / "packed.h5", images=folder / "img", masks=folder / "mask", force=True)

    cases = {"Pillow decoding alone": pillow, "libpng decoding alone": libpng,
             "decoding + hashes + HDF5 writes": required, "pack images": pack}
    speeds = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            started = time.perf_counter()
            run()
            speeds[name].append(2 * files / (time.perf_counter() - started))
    tracemalloc.start()  # a run of its own, for memory: tracing slows it
    pack()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return speeds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6, help="measuring time per case")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pack-files", type=int, default=1000, help="PNG slices for (4)")
    parser.add_argument("--pack-rounds", type=int, default=3, help="rounds of (4) and its bounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "isbi.h5"
        data = ROOT / "data" / "isbi2012"
        isbi.pack(path, volume=data / "train-volume.tif", labels=data / "train-labels.tif")
        results, cpu_ms = {}, {}

        def case(name, batches):
            results[name], cpu = cpu_ms[name] = measure(batches, args.batch, args.seconds)
            print(f"{name:52} {results[name]:9.1f} samples/s {cpu:8.2f} CPU ms/sample", flush=True)

        print(f"ISBI 2012, 30 samples of 512 x 512 uint8 image + mask, batch {args.batch}, "
              f"{args.seconds:g} s per case", flush=True)
        case("(1) raw h5py reads (shuffled)", raw_reads(path, args.batch))
        case("    raw h5py reads stacked into batches", raw_reads(path, args.batch, stacked=True))
        case("(2) hpctrain, in memory, no augmentation", hpctrain_batches(path, args.batch, None, True))
        case("(2) hpctrain, streamed, no augmentation", hpctrain_batches(path, args.batch, None, False))
        case("(2) hpctrain, in memory, augmentation", hpctrain_batches(path, args.batch, RECIPE, True))
        case("(2) hpctrain, streamed, augmentation", hpctrain_batches(path, args.batch, RECIPE, False))
        case("(3) Keras ImageDataGenerator, augmentation", keras_batches(path, Path(tmp) / "png", args.batch))
        speeds, peak = pack_speed(path, Path(tmp) / "pack", args.pack_files, args.pack_rounds)
        print(f"(4) {args.pack_files} PNG slices + {args.pack_files} masks on one core, files/s, median (range) of "
              f"{args.pack_rounds} rounds side by side:")
        for name, values in speeds.items():
            print(f"    {name:38} {np.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"    pack images: peak {peak:.1f} MB allocated for {args.pack_files * 2 * 512 * 512 / 2**20:.0f} MB of "
              "pixels", flush=True)
        rate, cpu = measure((synthetic.sample(512, 0, i) for i in itertools.count()), 1, args.seconds)
        print(f"(5) pack synthetic-em, 512 x 512 samples made {rate:9.1f} samples/s {cpu:8.2f} CPU ms/sample")

    plain = results["(2) hpctrain, in memory, no augmentation"] / results["(1) raw h5py reads (shuffled)"]
    augmented = (results["(2) hpctrain, in memory, augmentation"]
                 / results["(3) Keras ImageDataGenerator, augmentation"])
    print(f"\n(2, no augmentation) / (1) = {plain:5.2f}   goal >= 0.8   {'met' if plain >= 0.8 else 'NOT met'}")
    print(f"(2, augmentation) / (3)    = {augmented:5.1f}   goal >= 10    {'met' if augmented >= 10 else 'NOT met'}")
    packed, bound = (np.median(speeds[name]) for name in ("pack images", "decoding + hashes + HDF5 writes"))
    print(f"(4) pack images, files/s   = {packed:5.0f}   goal >= 500   {'met' if packed >= 500 else 'NOT met'}"
          f"   ({packed / 2:.0f} slices/s; {packed / bound:.0%} of decoding + hashes + writes alone)")
    cpu = cpu_ms["(3) Keras ImageDataGenerator, augmentation"][1] / cpu_ms["(2) hpctrain, in memory, augmentation"][1]
    print(f"CPU time per augmented sample, (3) / (2) = {cpu:.1f} (independent of how many cores are free)")


if __name__ == "__main__":
    main()
