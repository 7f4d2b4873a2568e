"""What the benchmarks share: where things are, and the real data packed into a scratch folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
HPCTRAIN = str(Path(sys.executable).parent / "hpctrain")


def write_job(path, **sections):
    """A job spec file (hpctrain.spec.write) with the step-time breakdown off unless `train` sets
    breakdown_steps: its calls after the last step lengthen every run and change no figure but its own."""
    from hpctrain import spec

    return spec.write(path, **{**sections, "train": {"breakdown_steps": 0, **sections.get("train", {})}})


def launch(job, workers, backend, overrides, out):
    """timing.json of `hpctrain launch -n WORKERS JOB --backend B` into the folder `out` (1 worker too under
    the backend, as `hpctrain scaling` runs it: one report group), every worker on a core of its own."""
    from hpctrain.launch.sweep import toml_string

    sets = [a for o in [*overrides, f"output.dir={toml_string(str(out))}"] for a in ("--set", o)]
    command = [HPCTRAIN, "launch", "-n", str(workers), str(job), "--backend", backend, *sets, "--force"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HPCTRAIN_CORES_PER_WORKER": "1"})
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((Path(out) / "timing.json").read_text())


def lockstep(timings):
    """Samples/s that runs side by side (the timing.json of independent runs at once) would have made had they
    waited for each other at every step, as synchronous data-parallel ranks do: at each moment of the time their
    measured steps overlap, all go at the pace of the slowest step then in progress. Independent runs never
    wait, so this is what the step-time noise of the machine leaves to any synchronous job on it. None when their
    measured steps never ran at the same time."""
    import numpy as np

    runs = []  # per run: the end of each measured step (Unix time) and its duration
    for t in timings:
        times = np.asarray(t["step_times"], float)
        ends = t["first_step_at"] + np.cumsum(times)
        runs.append((ends[t["warmup_steps"]:], times[t["warmup_steps"]:]))
    start = max(ends[0] - times[0] for ends, times in runs)
    end = min(ends[-1] for ends, _ in runs)
    if end <= start:
        return None
    cuts = np.unique(np.concatenate([[start, end], *(ends[(start < ends) & (ends < end)] for ends, _ in runs)]))
    middles = (cuts[:-1] + cuts[1:]) / 2
    slowest = np.max([times[np.searchsorted(ends, middles)] for ends, times in runs], axis=0)
    steps = np.sum(np.diff(cuts) / slowest)  # lockstep steps made in the overlap
    return sum(t["global_batch"] for t in timings) * steps / (end - start)


def pack_isbi(folder):
    from hpctrain.data import isbi

    return isbi.pack(Path(folder) / "isbi.h5", volume=ROOT / "data/isbi2012/train-volume.tif",
                     labels=ROOT / "data/isbi2012/train-labels.tif")


def pack_mnist(folder):
    from hpctrain.data import mnist

    return mnist.pack(Path(folder) / "mnist.h5", images=ROOT / "data/mnist/t10k-images-idx3-ubyte.gz",
                      labels=ROOT / "data/mnist/t10k-labels-idx1-ubyte.gz")
