"""Start-up: seconds from `hpctrain launch -n 2` to the first training step, per backend.

    .venv/bin/python benchmarks/startup.py [--repeat 3]

Goal: <= 15 s with 2 ranks. Measured on the chief: wall clock from just before the launcher starts
to the first step's begin (timing.json `first_step_at`); `startup_seconds` in timing.json is the part
inside the training process (imports, MPI/gRPC set-up, data, model build).
"""
import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import HPCTRAIN, pack_isbi, write_job


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = pack_isbi(tmp)
        job = write_job(Path(tmp) / "job.toml", name="startup",
                        data={"path": str(data), "split": "fold0", "tile": 256},
                        model={"name": "unet", "unet": {"depth": 4, "filters": 16}},
                        train={"batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "validation": False},
                        output={"dir": f"{tmp}/run", "tensorboard": False})
        print("| backend | launcher | to first step (s) | inside the process (s) |\n|---|---|---:|---:|")
        for backend, launcher in (("horovod", "mpirun"), ("horovod", "horovodrun"), ("multiworker", "local"),
                                  ("mirrored", "local")):
            totals, inside = [], []
            for _ in range(args.repeat):
                start = time.time()
                subprocess.run([HPCTRAIN, "launch", "-n", "2", str(job), "--backend", backend, "--launcher", launcher,
                                "--force"], check=True, capture_output=True)
                timing = json.loads((Path(tmp) / "run" / "timing.json").read_text())
                totals.append(timing["first_step_at"] - start)
                inside.append(timing["startup_seconds"])
            print(f"| {backend} | {launcher} | {statistics.median(totals):.1f} | {statistics.median(inside):.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
