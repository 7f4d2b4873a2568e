"""A rare foreground and the U-Net's losses: foreground Dice after a short training with each train.loss.

The data: seeded PNG slices of faint round "organelles" (about 9 % of the pixels) on noise, with their masks,
packed by `hpctrain pack images`; the U-Net trained on them for --epochs epochs (a fifth validates) with
each loss of the segmentation task, then `hpctrain evaluate` on the holdout slices. Prints, per loss, the
foreground Dice and the background Dice (median and range over the seeds).

    .venv/bin/python benchmarks/rare_foreground.py [--epochs 8] [--seeds 3] [--slices 40] [--size 128]
"""
import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from hpctrain.tasks import SEGMENTATION

from common import HPCTRAIN, write_job


def write_slices(folder, count, size, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for role in ("img", "mask"):
        (folder / role).mkdir(parents=True)
    shares = []
    for i in range(count):
        blobs = np.zeros((size, size), bool)
        for _ in range(max(1, size // 40)):
            cy, cx = rng.integers(0, size, 2)
            blobs |= (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 10) ** 2
        pixels = np.clip(rng.normal(100, 25, (size, size)) + 30 * blobs, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"s{i}.png")
        Image.fromarray(blobs.astype(np.uint8) * 255).save(folder / "mask" / f"s{i}.png")
        shares.append(blobs.mean())
    return float(np.mean(shares))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        share = write_slices(tmp / "png", args.slices, args.size)
        data = tmp / "rare.h5"
        _hpctrain("pack", "images", "--images", tmp / "png" / "img", "--masks", tmp / "png" / "mask",
                  "--class-names", "background,organelle", "-o", data)
        print(f"{args.slices} slices of {args.size}x{args.size}, foreground {100 * share:.1f} % of the pixels; "
              f"U-Net depth 4, 16 filters, batch 4, {args.epochs} epochs of "
              f"{(args.slices - round(args.slices / 5)) // 4} steps, seeds 0..{args.seeds - 1}", flush=True)
        print("| train.loss | foreground Dice, median (range) | background Dice, median (range) |")
        print("|---|---:|---:|")
        for loss in SEGMENTATION.losses:
            dice, background = [], []
            for seed in range(args.seeds):
                run = tmp / f"{loss.replace('+', '_')}-{seed}"
                job = write_job(tmp / "job.toml", name=run.name, data={"path": str(data), "split": "holdout"},
                                model={"name": "unet", "unet": {"depth": 4, "filters": 16, "dropout": 0.0}},
                                train={"learning_rate": 1e-3, "batch_size": 4, "epochs": args.epochs,
                                       "loss": loss, "seed": seed, "validation": False},
                                output={"dir": str(run)})
                _hpctrain("train", job)
                _hpctrain("evaluate", run, "--json", run / "scores.json")
                scores = json.loads((run / "scores.json").read_text())
                dice.append(scores["dice"]["organelle"])
                background.append(scores["dice"]["background"])
            print(f"| {loss} | {_spread(dice)} | {_spread(background)} |", flush=True)


def _hpctrain(*args):
    proc = subprocess.run([HPCTRAIN, *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"hpctrain {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def _spread(values):
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


if __name__ == "__main__":
    main()
