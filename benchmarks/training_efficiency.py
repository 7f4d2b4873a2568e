"""Training efficiency of the U-Net on this machine: hpctrain's whole path against a plain tf_keras fit of
the same model, achieved FLOP/s, and the model FLOPs utilisation (MFU) against the sgemm peak.

    .venv/bin/python benchmarks/training_efficiency.py [--filters 64] [--tile 256] [--batch 2] [--steps 25]
                                                       [--repeats 3] [--precision fp32|mixed]

- sgemm peak: numpy float32 matmul of 4096x4096 matrices, best of 5, in this run (threadpoolctl names
  the BLAS kernel).
- FLOPs per sample: counted analytically from the model's Conv2D layers (2 x H x W x kh x kw x Cin x Cout
  per layer; convolutions are > 99.9 % of the U-Net's arithmetic); one training step = 3 x forward.
- plain fit: `model.fit` on in-memory random data, no callbacks beyond a step timer.
- hpctrain: `hpctrain train` on the real ISBI 2012 HDF5 (pipeline, random crops, augmentation, checkpoint,
  metrics, timing callbacks); throughput from its timing.json.
Both after 5 warm-up steps, run in turn `--repeats` times; the figures are medians (throughput here
drifts by a few percent from minute to minute). `--precision mixed` trains both in bfloat16 on the CPU
(mixed_bfloat16; oneDNN uses AVX512_BF16 where the CPU has it): the MFU is then still against the
float32 sgemm peak, so it says how much faster than fp32 peak the step runs, not a bf16 utilisation.
Goals: hpctrain within 3 % of plain fit; MFU >= 0.85 for the default U-Net.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import HPCTRAIN, pack_isbi, write_job

WARMUP = 5


_PEAK = """
import time, numpy as np
from threadpoolctl import threadpool_info
n = 4096
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32); b = a.T.copy(); a @ b
def timed():
    start = time.perf_counter(); a @ b; return time.perf_counter() - start
best = min(timed() for _ in range(5))
blas = threadpool_info()[0]
print(2 * n ** 3 / best, blas.get("internal_api"), blas.get("architecture"), blas.get("num_threads"))
"""


def sgemm_peak():
    """numpy's float32 matmul in a clean process: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE, which this
    workplace may set for old OpenBLAS builds, are unset there (they select a slower kernel)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = subprocess.run([sys.executable, "-c", _PEAK], env=env, capture_output=True, text=True, check=True)
    flops, *kernel = out.stdout.split()
    return float(flops), " ".join(kernel)


def conv_flops(model):
    """Forward FLOPs per sample of the model's convolutions (multiply + add = 2)."""
    total = 0
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * layer.input.shape[-1] * c_out
    return total


def plain_fit(filters, tile, batch, steps, precision):
    from hpctrain import compat
    from hpctrain.models.unet import UNetSettings, build_unet

    tf, keras = compat.tf(), compat.keras()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "mixed" else "float32")
    model = build_unet(UNetSettings(depth=5, filters=filters, output="sigmoid", dropout=0.5), (tile, tile, 1))
    model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * 4, tile, tile, 1), dtype=np.uint8)  # pixels, as hpctrain feeds them
    y = rng.integers(0, 2, (batch * 4, tile, tile, 1), dtype=np.uint8)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            times.append(time.perf_counter() - self.t)

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Timer()])
    return batch * len(times[WARMUP:]) / sum(times[WARMUP:]), model


def hpctrain_fit(filters, tile, batch, steps, precision, tmp):
    data = Path(tmp) / "isbi.h5"
    if not data.exists():
        pack_isbi(tmp)

    job = write_job(Path(tmp) / "job.toml", name="efficiency",
                    data={"path": str(data), "split": "all", "tile": tile, "augment": {"enabled": True}},
                    model={"name": "unet", "unet": {"depth": 5, "filters": filters}},
                    train={"batch_size": batch, "epochs": 1, "steps_per_epoch": steps, "validation": False,
                           "warmup_steps": WARMUP, "precision": precision},
                    output={"dir": f"{tmp}/run"})
    subprocess.run([HPCTRAIN, "train", str(job), "--force"], check=True, capture_output=True)
    return json.loads((Path(tmp) / "run" / "timing.json").read_text())["throughput"]["samples_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "mixed"), default="fp32")
    args = parser.parse_args()
    peak, kernel = sgemm_peak()
    runs = {"plain": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            runs["ours"].append(hpctrain_fit(args.filters, args.tile, args.batch, args.steps, args.precision, tmp))
            tp, model = plain_fit(args.filters, args.tile, args.batch, args.steps, args.precision)
            runs["plain"].append(tp)
            print(f"round {round_ + 1}: plain fit {tp:.3f}, hpctrain {runs['ours'][-1]:.3f} samples/s", flush=True)
    plain, ours = statistics.median(runs["plain"]), statistics.median(runs["ours"])
    flops = 3 * conv_flops(model)
    print(f"U-Net depth 5, {args.filters} base filters ({model.count_params():,} parameters), {args.tile}x{args.tile}, "
          f"batch {args.batch}, {args.precision}, {args.steps} steps ({WARMUP} warm-up), median of {args.repeats}")
    print(f"sgemm peak (numpy, 4096^3)          {peak / 1e9:8.1f} GFLOP/s  ({kernel})")
    print(f"training FLOPs per sample (3 x fwd) {flops / 1e9:8.2f} GFLOP")
    print("| path | samples/s | GFLOP/s | MFU |\n|---|---:|---:|---:|")
    for name, tp in (("plain tf_keras fit, in-memory random data", plain),
                     ("hpctrain train (HDF5, augmentation)", ours)):
        print(f"| {name} | {tp:.3f} | {tp * flops / 1e9:.1f} | {tp * flops / peak:.2f} |")
    # each round's pair ran back to back, so the ratio within a round is the least disturbed by drift
    paired = [o / p - 1 for o, p in zip(runs["ours"], runs["plain"])]
    print(f"hpctrain against plain fit: median of the rounds {100 * statistics.median(paired):+.1f} % ("
          + ", ".join(f"{100 * r:+.1f} %" for r in paired) + f"); of the medians {100 * (ours / plain - 1):+.1f} %")


if __name__ == "__main__":
    main()
